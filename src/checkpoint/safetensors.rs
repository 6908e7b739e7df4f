//! `model.safetensors`: a JSON header of names, dtypes, shapes and byte ranges,
//! then the raw little-endian bytes.
//!
//! ```text
//! [8 bytes: header length N, u64 LE][N bytes: JSON header][data: every tensor's bytes]
//! {"wte.weight": {"dtype": "F32", "shape": [50257, 768], "data_offsets": [0, 154389504]}, ...}
//! ```
//!
//! The file is memory-mapped and parsed by the `safetensors` crate, which checks
//! that the header is valid and that every byte range lies inside the file, does
//! not overlap another and matches `dtype × shape`. An `f32`, `f16` or `bf16`
//! tensor is then used where it lies in the map (no copy; halves stay halves);
//! `f64` is upcast to owned `f32`s. When the crate refuses a file, we look at the header ourselves to
//! say which tensor is wrong and how.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use ndarray::{ArrayD, IxDyn};
use safetensors::{tensor::TensorView, Dtype as StDtype, SafeTensors};

use super::{Dtype, Tensor, Tensors};
use crate::weights::{Shared, SharedBytes, SharedF32};

/// Read every tensor of a safetensors file for which `keep(name)` is true.
/// Every error names the file.
///
/// The file is memory-mapped, and `f32`, `f16` and `bf16` tensors are **read
/// in place**, in their own dtype: their [`Tensor`]s share the map (it is
/// unmapped when the last of them is dropped), so loading costs neither a
/// copy nor a second resident set of the weights. `f64` tensors are decoded
/// into owned `f32`s, as is a tensor whose bytes are not aligned for its type.
pub fn read_safetensors(path: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Tensors> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: `Mmap::map` is unsafe because Rust cannot check what it needs:
    // that the mapped bytes stay valid and unchanged while a `&[u8]` into
    // them exists. Here:
    // 1. Lifetime. The map is owned by an `Arc` and every reference into it
    //    is borrowed from that `Arc` (`SharedF32::as_slice` borrows `&self`,
    //    which holds a clone of it), so the bytes stay mapped for as long as
    //    any tensor or model that reads them exists; the borrow checker
    //    enforces it. The map is unmapped when the last clone is dropped.
    // 2. Bounds. We never do pointer arithmetic on the map: it is read as a
    //    `&[u8]` through safe slicing only, and `SafeTensors::deserialize`
    //    checks the header length and every tensor's byte range against
    //    `mmap.len()` (the file's length when mapped) before slicing;
    //    `SharedF32::new` checks its range again, and its alignment, before
    //    the bytes are seen as `f32`s (by `bytemuck`, which checks both).
    //    An empty file is fine (memmap2 maps it as an empty slice).
    // 3. No concurrent modification, the one obligation left to the caller:
    //    the file is opened read-only and this crate never writes to it, but
    //    another process could, for as long as the model lives. Model files
    //    are written once (the Hugging Face cache downloads to a temporary
    //    file and renames it into place, which leaves a mapped file intact),
    //    and we accept that a model file is not modified in place while a
    //    model read from it is alive, as every mmap-based loader does
    //    (safetensors' own Python binding and `torch.load(mmap=True)`
    //    included); `Gpt2::from_dir` documents it. Were it violated anyway,
    //    the header has already been parsed into owned values (names, shapes,
    //    offsets) before any tensor byte is read, and tensor bytes are only
    //    used as numbers (any bit pattern is a valid `f32`): a concurrent
    //    write can change weights, not bounds or control flow; a concurrent
    //    truncation makes the kernel stop the process with SIGBUS, never read
    //    other memory.
    let mmap = unsafe { Mmap::map(&file) }
        .with_context(|| format!("cannot memory-map {}", path.display()))?;
    advise_huge_pages(&mmap);
    let shared: SharedBytes = Arc::new(mmap);
    read_shared(&shared, keep).with_context(|| format!("in {}", path.display()))
}

/// Ask Linux to back the map with transparent huge pages (2 MB) where it
/// can, before any byte of it is read: the pages of the file that are not
/// in the page cache yet are then read from disk into 2 MB pages and mapped
/// whole, so that streaming the weights misses the TLB once per 2 MB instead
/// of once per 4 KB. A file whose pages are already cached keeps the pages
/// it has (one just copied with `cp` may have no 2 MB page at all); the
/// advice is only a hint, and a kernel without transparent huge pages
/// refuses it, which changes nothing.
///
/// What it buys was measured on a virtual machine (AMD EPYC Zen 4, 2
/// threads, Linux 6.18, transparent huge pages on `madvise`), where a miss
/// of the TLB costs a walk of two page tables: the bench's 1 GiB read ran at
/// 35–38 GB/s in 2 MB pages against 32–35 in 4 KB ones when the host's
/// bandwidth was low, 58–63 against 46–53 when it was high, and greedy
/// decoding of GPT-2 small read its weights 3–7% faster from a page cache in
/// 2 MB pages than from one in 4 KB pages, f32 and f16 alike (`docs/bench.md`,
/// section "Huge pages"). Read cold without the advice, the file was mapped
/// 92% in 2 MB pages (the kernel's readahead grows its pages as it goes);
/// with it, 100%.
fn advise_huge_pages(map: &Mmap) {
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    #[cfg(not(target_os = "linux"))]
    let _ = map;
}

/// [`read_safetensors`] on bytes already in memory; every tensor is copied
/// out of them (halves stay halves).
pub fn read_safetensors_bytes(bytes: &[u8], keep: &dyn Fn(&str) -> bool) -> Result<Tensors> {
    read(bytes, keep, |_, _| None)
}

/// [`read_safetensors`] on shared bytes: `f32`, `f16` and `bf16` tensors are
/// read in place.
pub(crate) fn read_shared(bytes: &SharedBytes, keep: &dyn Fn(&str) -> bool) -> Result<Tensors> {
    let all: &[u8] = (**bytes).as_ref();
    read(all, keep, |view, data| {
        // Where the tensor's bytes start inside the file: an offset computed
        // from two addresses, both inside `all`.
        let start = data.as_ptr() as usize - all.as_ptr() as usize;
        let shape = view.shape().to_vec();
        match view.dtype() {
            StDtype::F32 => {
                let values = SharedF32::new(Arc::clone(bytes), start, data.len() / 4)?;
                Tensor::shared(Dtype::F32, shape, values)
            }
            StDtype::F16 | StDtype::BF16 => {
                let bits = Shared::<u16>::new(Arc::clone(bytes), start, data.len() / 2)?;
                Tensor::half(half_dtype(view.dtype())?, shape, bits)
            }
            _ => None,
        }
    })
}

/// Our name of a safetensors half-precision dtype.
fn half_dtype(dtype: StDtype) -> Option<Dtype> {
    match dtype {
        StDtype::F16 => Some(Dtype::F16),
        StDtype::BF16 => Some(Dtype::BF16),
        _ => None,
    }
}

/// Parse the header, then turn each kept tensor into a [`Tensor`]: through
/// `in_place` when it gives one, else decoded into owned values.
fn read(
    bytes: &[u8],
    keep: &dyn Fn(&str) -> bool,
    in_place: impl Fn(&TensorView<'_>, &[u8]) -> Option<Tensor>,
) -> Result<Tensors> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| match diagnose(bytes) {
        Some(why) => anyhow!("not a valid safetensors file: {why} ({e})"),
        None => anyhow!("not a valid safetensors file: {e}"),
    })?;
    let mut tensors = Tensors::new();
    for (name, view) in st.tensors() {
        if keep(&name) {
            let tensor = match in_place(&view, view.data()) {
                Some(tensor) => tensor,
                None => decode(&view).with_context(|| format!("tensor {name:?}"))?,
            };
            tensors.insert(name, tensor);
        }
    }
    Ok(tensors)
}

/// Copy one stored tensor into owned values: halves as their bits, anything
/// else upcast to `f32`.
fn decode(view: &TensorView<'_>) -> Result<Tensor> {
    let bytes = view.data();
    if let Some(dtype) = half_dtype(view.dtype()) {
        let bits = convert_bits(bytes);
        return Tensor::half(dtype, view.shape().to_vec(), Shared::from_vec(bits))
            .context("shape does not match the number of bytes");
    }
    let (dtype, values): (Dtype, Vec<f32>) = match view.dtype() {
        StDtype::F32 => (Dtype::F32, convert(bytes, f32::from_le_bytes)),
        StDtype::F64 => (Dtype::F64, convert(bytes, |b| f64::from_le_bytes(b) as f32)),
        other => bail!("unsupported dtype {other:?} (weights must be F32, F16, BF16 or F64)"),
    };
    let array = ArrayD::from_shape_vec(IxDyn(view.shape()), values)
        .context("shape does not match the number of bytes")?;
    Ok(Tensor::owned(dtype, array))
}

/// Little-endian 16-bit elements.
fn convert_bits(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Decode little-endian elements of `N` bytes each.
fn convert<const N: usize>(bytes: &[u8], decode: impl Fn([u8; N]) -> f32) -> Vec<f32> {
    bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut b = [0u8; N];
            b.copy_from_slice(chunk);
            decode(b)
        })
        .collect()
}

// ---- saying what is wrong with a file the safetensors crate refused ----

/// Bits per element of a safetensors dtype name, `None` for an unknown name.
fn dtype_bits(name: &str) -> Option<usize> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        "U16" | "I16" | "F16" | "BF16" => 16,
        "U32" | "I32" | "F32" => 32,
        "U64" | "I64" | "F64" | "C64" => 64,
        _ => return None,
    })
}

/// One header entry: (name, dtype, shape, data_offsets).
type Entry<'a> = (&'a str, &'a str, Vec<u64>, [u64; 2]);

/// The first problem found in a file's header, in words that name the tensor,
/// or `None` when the header is too broken to read (the crate's own message
/// then says why) or no specific problem is found.
fn diagnose(bytes: &[u8]) -> Option<String> {
    let Some(len_bytes) = bytes.get(..8) else {
        return Some(format!(
            "the file has {} bytes, fewer than the 8 of the header length",
            bytes.len()
        ));
    };
    let header_len = u64::from_le_bytes(len_bytes.try_into().ok()?);
    let after = (bytes.len() - 8) as u64;
    if header_len > after {
        return Some(format!(
            "the header length field says {header_len} bytes, but only {after} bytes follow it \
             (a truncated file, or not a safetensors file)"
        ));
    }
    let header_end = 8 + usize::try_from(header_len).ok()?;
    let header = std::str::from_utf8(bytes.get(8..header_end)?).ok()?;
    let json: serde_json::Value = serde_json::from_str(header).ok()?;
    let data_len = (bytes.len() - header_end) as u64;
    let mut entries: Vec<Entry> = Vec::new();
    for (name, info) in json.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info.get("dtype")?.as_str()?;
        let shape: Vec<u64> = info
            .get("shape")?
            .as_array()?
            .iter()
            .map(serde_json::Value::as_u64)
            .collect::<Option<_>>()?;
        let offsets = info.get("data_offsets")?.as_array()?;
        let [start, end] = [offsets.first()?.as_u64()?, offsets.get(1)?.as_u64()?];
        if let Some(problem) = check_entry(name, dtype, &shape, [start, end], data_len) {
            return Some(problem);
        }
        entries.push((name, dtype, shape, [start, end]));
    }
    check_layout(&mut entries, data_len)
}

/// A tensor's own problems: a range that ends before it starts or past the
/// data, or a byte count that disagrees with `dtype × shape`.
fn check_entry(
    name: &str,
    dtype: &str,
    shape: &[u64],
    [start, end]: [u64; 2],
    data_len: u64,
) -> Option<String> {
    if end < start {
        return Some(format!(
            "tensor {name:?} has data_offsets [{start}, {end}], which end before they start"
        ));
    }
    let bytes = shape
        .iter()
        .try_fold(1u64, |acc, &n| acc.checked_mul(n))
        .and_then(|n| n.checked_mul(dtype_bits(dtype)? as u64))
        .map(|bits| bits.div_ceil(8));
    if end > data_len {
        let claim = bytes.map_or("an overflowing number of".into(), |b| b.to_string());
        return Some(format!(
            "tensor {name:?} ({dtype}, shape {shape:?}, {claim} bytes) has data_offsets \
             [{start}, {end}], past the {data_len} bytes of data the file holds \
             (a truncated file, or a size it does not hold)"
        ));
    }
    match bytes {
        Some(b) if b != end - start => Some(format!(
            "tensor {name:?}: dtype {dtype} × shape {shape:?} is {b} bytes, but its data_offsets \
             [{start}, {end}] hold {}",
            end - start
        )),
        None if dtype_bits(dtype).is_some() => Some(format!(
            "tensor {name:?}: the size of shape {shape:?} overflows"
        )),
        _ => None,
    }
}

/// Problems between tensors: overlapping ranges, gaps, data left over.
fn check_layout(entries: &mut [Entry], data_len: u64) -> Option<String> {
    entries.sort_by_key(|(_, _, _, offsets)| *offsets);
    let mut covered = 0u64;
    let mut previous: Option<&Entry> = None;
    for entry in entries.iter() {
        let (name, _, _, [start, end]) = entry;
        if *start < covered {
            let (prev, _, _, [ps, pe]) = previous?;
            return Some(format!(
                "tensors {prev:?} (bytes {ps}..{pe}) and {name:?} (bytes {start}..{end}) overlap"
            ));
        }
        if *start > covered {
            return Some(format!(
                "bytes {covered}..{start} of the data, before tensor {name:?}, belong to no tensor"
            ));
        }
        covered = *end;
        previous = Some(entry);
    }
    (covered != data_len).then(|| {
        format!("the tensors cover {covered} bytes of data, but the file holds {data_len}")
    })
}
