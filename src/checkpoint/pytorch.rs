//! `pytorch_model.bin` (what `torch.save(state_dict)` writes) → named `f32` arrays.
//!
//! Two layouts exist in the wild, both holding the same pickled state dict
//! (see [What a pickle is](#what-a-pickle-is) below):
//!
//! * **zip** (torch ≥ 1.6): a zip archive with one top folder of any name,
//!   holding `<top>/data.pkl` (the state dict), `<top>/data/<key>` (the raw
//!   little-endian bytes of each storage), `<top>/byteorder` and a few small
//!   bookkeeping entries. Torch stores the entries uncompressed.
//! * **legacy** (torch < 1.6, e.g. the 2019 GPT-2 files; first bytes `80 02`):
//!   five pickles in a row — a magic number, a protocol version (1001), a
//!   sys-info dict, the state dict, the list of storage keys — and then, for
//!   each key in that order, an 8-byte little-endian element count followed by
//!   the storage's raw bytes.
//!
//! In both, a tensor is `_rebuild_tensor_v2(storage, offset, size, stride, ...)`:
//! a strided view into a storage, which several tensors may share (a tied
//! `lm_head.weight` and `wte.weight`). We read each needed storage once, check
//! that the view fits inside it, and copy the viewed elements into a fresh
//! row-major `f32` array.
//!
//! # What a pickle is
//!
//! Python's `pickle` format is a small program for a stack machine. Each
//! instruction ("opcode") is one byte, sometimes followed by an argument. This
//! is the start of `torch.save(nn.Linear(2, 2).state_dict())`, as
//! `python -m pickletools` shows it:
//!
//! ```text
//! c  collections OrderedDict    GLOBAL        push the class collections.OrderedDict
//! q  0                          BINPUT        memo[0] = top of stack (for later BINGET 0)
//! )                             EMPTY_TUPLE   push ()
//! R                             REDUCE        pop args, pop callable, push callable(*args):
//!                                             the (empty) state dict
//! (                             MARK          remember the stack height
//! X  'weight'                   BINUNICODE    push a string (4-byte length, then UTF-8)
//! c  torch._utils _rebuild_tensor_v2
//! (  (  X 'storage'  c torch FloatStorage  X '0'  X 'cpu'  K 4  t
//!                               ... TUPLE     ('storage', FloatStorage, '0', 'cpu', 4)
//! Q                             BINPERSID     "storage 0": bytes stored outside the pickle
//! K 0   K 2 K 2 \x86   K 2 K 1 \x86   \x89   h 0 ) R
//!                                             offset 0, size (2, 2), stride (2, 1),
//!                                             False, OrderedDict() (BINGET 0 = the class)
//! t  R                          TUPLE REDUCE  _rebuild_tensor_v2(storage, 0, (2, 2), (2, 1), ...)
//! X 'bias'  ...                               the next key and tensor
//! u                             SETITEMS      move the key/value pairs above the MARK
//!                                             into the dict below it
//! .                             STOP          the top of the stack is the result
//! ```
//!
//! `GLOBAL` + `REDUCE` is what makes unpickling untrusted files dangerous: a
//! pickle may name *any* importable function (`os.system`, `builtins.eval`)
//! and call it. Our unpickler never calls anything. `GLOBAL` only resolves a
//! short allow-list of names (`Global`); any other name is an error. `REDUCE`
//! only "applies" those names by building plain data: `OrderedDict()` becomes
//! an empty dict, `_rebuild_tensor_v2(...)` becomes a `TensorRef` that
//! records which storage a tensor views and how.
//!
//! The tensor bytes are not in the pickle. Torch writes each storage as a
//! *persistent id* (opcode `BINPERSID`): a tuple
//! `('storage', torch.FloatStorage, '<key>', 'cpu', numel)` that the loader
//! resolves to the raw bytes stored elsewhere in the file (`StorageRef`).
//!
//! ## Resource limits
//!
//! The input is untrusted. Every read checks that the bytes exist (a short
//! stream is a "truncated" error, never a panic), long strings are read
//! incrementally so a forged length cannot trigger a huge allocation, and every
//! value is cheap to copy: strings are reference-counted and tuples, lists and
//! dicts live in flat arenas inside `Pickle`, referenced by index. That keeps
//! memory linear in the input size even when a pickle re-pushes the same
//! object many times with `BINGET`, and keeps cyclic or deeply nested input
//! harmless.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::Path;
use std::rc::Rc;

use anyhow::{anyhow, bail, ensure, Context, Result};
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use zip::ZipArchive;

use super::pickle::{self, Pickle, StorageType, TensorRef, Value};
use super::{Dtype, Tensor, Tensors};

/// The first pickle of a legacy file.
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// The second pickle of a legacy file.
const LEGACY_PROTOCOL_VERSION: i128 = 1001;

/// Reads every tensor of a PyTorch checkpoint (zip or legacy) for which
/// `keep(key)` is true. Skipped tensors are parsed but their data is never
/// read or converted. Every error names the file.
pub fn read_pytorch_bin(path: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Tensors> {
    let read = || -> Result<Tensors> {
        let file = File::open(path)?;
        let file_len = file.metadata()?.len();
        read_from(file, file_len, keep)
    };
    read().with_context(|| format!("reading PyTorch checkpoint {}", path.display()))
}

/// [`read_pytorch_bin`] on the bytes of a file already in memory.
pub fn read_pytorch_bin_bytes(bytes: &[u8], keep: &dyn Fn(&str) -> bool) -> Result<Tensors> {
    read_from(Cursor::new(bytes), bytes.len() as u64, keep)
}

/// Reads a checkpoint of `file_len` bytes from `reader`, positioned at its start.
fn read_from<R: Read + Seek>(
    mut reader: R,
    file_len: u64,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Tensors> {
    let mut head = Vec::new();
    (&mut reader).take(4).read_to_end(&mut head)?;
    reader.rewind()?;
    if head.starts_with(b"PK") {
        read_zip(reader, file_len, keep)
    } else if head.starts_with(&[0x80, 0x02]) {
        read_legacy(reader, file_len, keep)
    } else if head.is_empty() {
        bail!("the file is empty")
    } else if head.len() < 2 && (b"PK".starts_with(&head) || [0x80, 0x02].starts_with(&head)) {
        bail!("the file is truncated after {} byte", head.len())
    } else {
        let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
        bail!(
            "the file is neither a PyTorch zip checkpoint nor a legacy torch.save file \
             (first bytes {})",
            hex.join(" ")
        )
    }
}

// ---- the zip format ----

fn read_zip<R: Read + Seek>(
    reader: R,
    file_len: u64,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Tensors> {
    let mut archive =
        ZipArchive::new(reader).context("the file starts like a zip but is not a valid one")?;
    let top = top_folder(&archive)?;
    check_zip_byteorder(&mut archive, &format!("{top}/byteorder"), file_len)?;
    let pickle = read_zip_pickle(&mut archive, &format!("{top}/data.pkl"))?;
    let mut tensors = Tensors::new();
    let mut budget = OutputBudget::for_file(file_len);
    for (key, views) in kept_by_storage(&pickle, keep)? {
        let entry = format!("{top}/data/{key}");
        let bytes = read_zip_entry(&mut archive, &entry, file_len)
            .with_context(|| format!("reading the storage of tensor {}", tensor_names(&views)))?;
        convert_views(&views, &bytes, &key, &mut tensors, &mut budget)?;
    }
    Ok(tensors)
}

/// The folder holding `data.pkl`, e.g. `pytorch_model` or `archive`.
fn top_folder<R: Read + Seek>(archive: &ZipArchive<R>) -> Result<String> {
    let top = archive
        .file_names()
        .filter_map(|name| name.strip_suffix("/data.pkl"))
        .find(|top| !top.contains('/'));
    top.map(str::to_owned).ok_or_else(|| {
        anyhow!("the zip archive has no <folder>/data.pkl entry, so it is not a PyTorch checkpoint")
    })
}

/// Torch writes `little` or `big` in `<top>/byteorder` (older files have no such entry).
fn check_zip_byteorder<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    name: &str,
    file_len: u64,
) -> Result<()> {
    if archive.index_for_name(name).is_some() {
        let order = read_zip_entry(archive, name, file_len)?;
        let order = String::from_utf8_lossy(&order);
        ensure!(
            order == "little",
            "unsupported byte order {order:?} in {name}"
        );
    }
    Ok(())
}

fn read_zip_pickle<R: Read + Seek>(archive: &mut ZipArchive<R>, name: &str) -> Result<Pickle> {
    let entry = archive
        .by_name(name)
        .with_context(|| format!("opening {name}"))?;
    pickle::load(BufReader::new(entry)).with_context(|| format!("parsing {name}"))
}

/// Reads one whole entry, refusing sizes larger than the file itself.
fn read_zip_entry<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    name: &str,
    file_len: u64,
) -> Result<Vec<u8>> {
    let entry = archive.by_name(name).map_err(|e| match e {
        zip::result::ZipError::FileNotFound => {
            anyhow!("entry {name} is missing from the zip archive")
        }
        other => anyhow!(other).context(format!("opening zip entry {name}")),
    })?;
    let size = entry.size();
    ensure!(
        size <= file_len,
        "zip entry {name} claims {size} bytes, more than the whole file"
    );
    let mut bytes = Vec::with_capacity(usize::try_from(size)?);
    entry
        .take(size)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading zip entry {name}"))?;
    ensure!(bytes.len() as u64 == size, "zip entry {name} is truncated");
    Ok(bytes)
}

// ---- the legacy format ----

fn read_legacy<R: Read + Seek>(
    reader: R,
    file_len: u64,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Tensors> {
    let mut reader = BufReader::new(reader);
    check_legacy_header(&mut reader)?;
    let state_dict = pickle::load(&mut reader).context("parsing the state-dict pickle")?;
    let storage_types = storage_types(&state_dict)?;
    let mut kept = kept_by_storage(&state_dict, keep)?;
    let mut budget = OutputBudget::for_file(file_len);
    let key_list = pickle::load(&mut reader).context("parsing the storage-key list")?;
    let mut tensors = Tensors::new();
    for key in string_list(&key_list)? {
        let ty = storage_types
            .get(&key)
            .ok_or_else(|| anyhow!("storage {key:?} is listed but used by no tensor"))?;
        let nbytes = legacy_storage_len(&mut reader, &key, ty, file_len)?;
        match kept.remove(&key) {
            Some(views) => {
                let mut bytes = vec![0u8; nbytes];
                reader
                    .read_exact(&mut bytes)
                    .map_err(|_| anyhow!("legacy file is truncated inside storage {key:?}"))?;
                convert_views(&views, &bytes, &key, &mut tensors, &mut budget)?;
            }
            None => reader.seek_relative(i64::try_from(nbytes)?)?,
        }
    }
    if let Some((key, views)) = kept.first_key_value() {
        bail!(
            "storage {key:?} of tensor {} is missing from the legacy file",
            tensor_names(views)
        );
    }
    Ok(tensors)
}

/// Checks the magic number, protocol version and byte order pickles.
fn check_legacy_header(reader: &mut impl Read) -> Result<()> {
    let magic = pickle::load(&mut *reader).context("parsing the magic-number pickle")?;
    ensure!(
        matches!(magic.root, Value::Int(LEGACY_MAGIC)),
        "bad legacy magic number"
    );
    let version = pickle::load(&mut *reader).context("parsing the protocol-version pickle")?;
    ensure!(
        matches!(version.root, Value::Int(LEGACY_PROTOCOL_VERSION)),
        "unsupported legacy protocol version {:?}",
        version.root
    );
    let sys_info = pickle::load(&mut *reader).context("parsing the sys-info pickle")?;
    let big_endian = sys_info
        .dict_items(&sys_info.root)
        .unwrap_or(&[])
        .iter()
        .any(|(k, v)| {
            matches!(k, Value::Str(k) if &**k == "little_endian") && matches!(v, Value::Bool(false))
        });
    ensure!(!big_endian, "big-endian legacy files are not supported");
    Ok(())
}

/// Reads a storage's 8-byte element count; returns its byte length after
/// checking that that many bytes remain in the file.
fn legacy_storage_len<R: Read + Seek>(
    reader: &mut BufReader<R>,
    key: &str,
    ty: &StorageType,
    file_len: u64,
) -> Result<usize> {
    let mut count = [0u8; 8];
    reader
        .read_exact(&mut count)
        .map_err(|_| anyhow!("legacy file is truncated before storage {key:?}"))?;
    let numel = u64::from_le_bytes(count);
    let nbytes = numel
        .checked_mul(ty.element_size as u64)
        .ok_or_else(|| anyhow!("storage {key:?} claims an absurd {numel} elements"))?;
    let remaining = file_len.saturating_sub(reader.stream_position()?);
    ensure!(
        nbytes <= remaining,
        "legacy file is truncated: storage {key:?} needs {nbytes} bytes, only {remaining} remain"
    );
    Ok(usize::try_from(nbytes)?)
}

/// Storage key → storage type, over every tensor (kept or not): the legacy
/// reader needs element sizes to skip storages it does not convert.
fn storage_types(pickle: &Pickle) -> Result<HashMap<String, StorageType>> {
    let tensors = state_dict_tensors(pickle)?;
    Ok(tensors
        .into_iter()
        .map(|(_, t)| (t.storage.key.clone(), t.storage.ty))
        .collect())
}

fn string_list(pickle: &Pickle) -> Result<Vec<String>> {
    let items = pickle.sequence(&pickle.root).ok_or_else(|| {
        anyhow!(
            "the storage-key list is a {}, not a list",
            pickle.root.kind()
        )
    })?;
    let to_string = |v: &Value| match v {
        Value::Str(s) => Ok(s.to_string()),
        other => bail!("storage key is a {}, not a string", other.kind()),
    };
    items.iter().map(to_string).collect()
}

// ---- from the pickle to arrays ----

/// Tensors that view one storage: (state-dict key, view).
type Views = Vec<(String, Rc<TensorRef>)>;

/// The (key, tensor) pairs of the pickled state dict, skipping non-tensor values.
fn state_dict_tensors(pickle: &Pickle) -> Result<Vec<(String, Rc<TensorRef>)>> {
    let items = pickle.dict_items(&pickle.root).ok_or_else(|| {
        anyhow!(
            "the pickle holds a {}, not a state dict",
            pickle.root.kind()
        )
    })?;
    let mut tensors = Vec::new();
    for (key, value) in items {
        let Value::Str(key) = key else {
            bail!("state-dict key is a {}, not a string", key.kind());
        };
        if let Value::Tensor(tensor) = value {
            tensors.push((key.to_string(), Rc::clone(tensor)));
        }
    }
    Ok(tensors)
}

/// The tensors `keep` selects, grouped by storage key so each storage is
/// read once. Fails on a kept non-tensor value or an unsupported dtype.
fn kept_by_storage(
    pickle: &Pickle,
    keep: &dyn Fn(&str) -> bool,
) -> Result<BTreeMap<String, Views>> {
    for (key, value) in pickle.dict_items(&pickle.root).unwrap_or(&[]) {
        let is_tensor = matches!(value, Value::Tensor(_));
        if let Value::Str(key) = key {
            ensure!(
                is_tensor || !keep(key),
                "state-dict entry {key:?} is a {}, not a tensor",
                value.kind()
            );
        }
    }
    let mut groups: BTreeMap<String, Views> = BTreeMap::new();
    for (key, tensor) in state_dict_tensors(pickle)?
        .into_iter()
        .filter(|(k, _)| keep(k))
    {
        let ty = tensor.storage.ty;
        ensure!(
            ty.dtype.is_some(),
            "tensor {key:?} is stored as {}, which cannot be converted to f32 \
             (supported dtypes: float32, float16, bfloat16, float64)",
            ty.name
        );
        groups
            .entry(tensor.storage.key.clone())
            .or_default()
            .push((key, tensor));
    }
    Ok(groups)
}

/// The `f32` bytes the converted tensors may still take.
///
/// Each tensor is copied out of its storage, so a few bytes of pickle that
/// make a million tensors view one large storage would otherwise ask for
/// terabytes. A real checkpoint's tensors take at most about twice its size
/// (an `f16` file upcast to `f32`), four times with a tied `f16` head (two
/// full views of one storage); the budget is eight times the file, plus 1 MiB.
struct OutputBudget {
    left: u64,
    file_len: u64,
}

impl OutputBudget {
    const PER_FILE_BYTE: u64 = 8;

    fn for_file(file_len: u64) -> Self {
        let left = file_len
            .saturating_mul(Self::PER_FILE_BYTE)
            .saturating_add(1 << 20);
        OutputBudget { left, file_len }
    }

    /// Takes `numel` `f32` values out of the budget, or fails.
    fn take(&mut self, numel: usize) -> Result<()> {
        let bytes = (numel as u64).saturating_mul(4);
        ensure!(
            bytes <= self.left,
            "the tensors would take more than {} times the {} bytes of the file as f32: \
             refusing a file whose tensors view the same storage over and over",
            Self::PER_FILE_BYTE,
            self.file_len
        );
        self.left -= bytes;
        Ok(())
    }
}

fn tensor_names(views: &Views) -> String {
    let names: Vec<String> = views.iter().map(|(name, _)| format!("{name:?}")).collect();
    names.join(", ")
}

fn convert_views(
    views: &Views,
    bytes: &[u8],
    storage_key: &str,
    out: &mut Tensors,
    budget: &mut OutputBudget,
) -> Result<()> {
    for (name, view) in views {
        let tensor = tensor_from_storage(view, bytes, budget)
            .with_context(|| format!("tensor {name:?} (storage {storage_key:?})"))?;
        out.insert(name.clone(), tensor);
    }
    Ok(())
}

/// Copies the elements a view selects out of its storage's raw bytes, after
/// checking that they lie inside it and fit in the budget.
fn tensor_from_storage(
    view: &TensorRef,
    bytes: &[u8],
    budget: &mut OutputBudget,
) -> Result<Tensor> {
    let dtype = view
        .storage
        .ty
        .dtype
        .ok_or_else(|| anyhow!("unsupported {}", view.storage.ty.name))?;
    let numel = checked_product(&view.size)?;
    if numel == 0 {
        return Ok(Tensor::owned(dtype, ArrayD::zeros(IxDyn(&view.size))));
    }
    let end = last_element(view)?
        .checked_add(1)
        .ok_or_else(|| anyhow!("tensor extent overflows"))?;
    let needed = end
        .checked_mul(dtype.size())
        .ok_or_else(|| anyhow!("tensor extent of {end} elements overflows"))?;
    ensure!(
        needed <= bytes.len(),
        "the storage is shorter than the tensor needs: offset {}, size {:?} and stride {:?} need \
         {needed} bytes, the storage has {}",
        view.offset,
        view.size,
        view.stride,
        bytes.len()
    );
    let stored = bytes.len() / dtype.size();
    ensure!(
        numel <= stored,
        "tensor has {numel} elements but its storage holds only {stored} \
         (broadcast views are not supported)"
    );
    budget.take(numel)?;
    let values = gather(view, numel, bytes, dtype)?;
    let array = ArrayD::from_shape_vec(IxDyn(&view.size), values)?;
    Ok(Tensor::owned(dtype, array))
}

/// The `numel` elements a view selects, in row-major order. A row-major
/// view is one slice of the storage, decoded at once; any other is gathered
/// element by element, so the work is proportional to the tensor, never to
/// the storage it views. The view has been checked to lie inside `bytes`.
fn gather(view: &TensorRef, numel: usize, bytes: &[u8], dtype: Dtype) -> Result<Vec<f32>> {
    let width = dtype.size();
    let element = |pos: usize| {
        bytes
            .get(pos * width..(pos + 1) * width)
            .map(|b| decode_one(b, dtype))
            .ok_or_else(|| anyhow!("element {pos} lies outside the storage"))
    };
    // Dimensions of size 1 move nothing; the others, outermost first.
    let dims: Vec<(usize, usize)> = (view.size.iter().zip(&view.stride))
        .filter(|(&n, _)| n != 1)
        .map(|(&n, &s)| (n, s))
        .collect();
    let row_major = dims
        .iter()
        .rev()
        .try_fold(1usize, |expected, &(n, s)| {
            (s == expected).then(|| expected * n)
        })
        .is_some();
    if row_major {
        let start = view.offset * width;
        let slice = bytes
            .get(start..start + numel * width)
            .ok_or_else(|| anyhow!("the tensor lies outside its storage"))?;
        return Ok(decode(slice, dtype));
    }
    let mut values = Vec::with_capacity(numel);
    let mut index = vec![0usize; dims.len()];
    let mut pos = view.offset;
    loop {
        values.push(element(pos)?);
        // Advance the multi-index like an odometer, innermost dimension first.
        let mut d = dims.len();
        loop {
            if d == 0 {
                return Ok(values);
            }
            d -= 1;
            let (n, stride) = dims[d];
            index[d] += 1;
            if index[d] < n {
                pos += stride;
                break;
            }
            index[d] = 0;
            pos -= stride * (n - 1);
        }
    }
}

fn checked_product(size: &[usize]) -> Result<usize> {
    size.iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n))
        .ok_or_else(|| anyhow!("tensor size {size:?} overflows"))
}

/// Storage index of the view's last element: `offset + Σ (size_i − 1)·stride_i`.
/// Only called for views with no zero-sized dimension.
fn last_element(view: &TensorRef) -> Result<usize> {
    view.size
        .iter()
        .zip(&view.stride)
        .try_fold(view.offset, |acc, (&n, &s)| {
            acc.checked_add(n.checked_sub(1)?.checked_mul(s)?)
        })
        .ok_or_else(|| {
            anyhow!(
                "tensor extent (size {:?}, stride {:?}) overflows",
                view.size,
                view.stride
            )
        })
}

/// One little-endian element of `dtype` (`bytes` is exactly its size) → `f32`.
fn decode_one(bytes: &[u8], dtype: Dtype) -> f32 {
    let mut b = [0u8; 8];
    b[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
    match dtype {
        Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        Dtype::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
        Dtype::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        Dtype::F64 => f64::from_le_bytes(b) as f32,
    }
}

/// Raw little-endian storage bytes → `f32`, upcasting half precision.
fn decode(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
    }
}
