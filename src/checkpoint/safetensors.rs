//! `model.safetensors`: a JSON header of names, dtypes, shapes and byte ranges,
//! then the raw little-endian bytes.
//!
//! The file is memory-mapped and parsed by the `safetensors` crate, which checks
//! that the header is valid and that every byte range lies inside the file, does
//! not overlap another and matches `dtype × shape`. Each kept tensor is then
//! upcast to `f32` from its stored dtype.

use std::fs::File;
use std::path::Path;

use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use ndarray::{ArrayD, IxDyn};
use safetensors::{tensor::TensorView, Dtype as StDtype, SafeTensors};

use super::{Dtype, Tensor, Tensors};

/// Read every tensor of a safetensors file for which `keep(name)` is true.
pub fn read_safetensors(path: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Tensors> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the map is only read, and only during this call. A memory map is
    // undefined behaviour if another process truncates or rewrites the file
    // while it is mapped; like every mmap-based loader (safetensors' own
    // Python binding included) we accept that a model file is not modified
    // while it is being loaded. All bounds are checked by `SafeTensors`.
    let mmap = unsafe { Mmap::map(&file) }
        .with_context(|| format!("cannot memory-map {}", path.display()))?;
    read_safetensors_bytes(&mmap, keep).with_context(|| format!("in {}", path.display()))
}

/// [`read_safetensors`] on bytes already in memory.
pub fn read_safetensors_bytes(bytes: &[u8], keep: &dyn Fn(&str) -> bool) -> Result<Tensors> {
    let st = SafeTensors::deserialize(bytes).context("not a valid safetensors file")?;
    let mut tensors = Tensors::new();
    for (name, view) in st.tensors() {
        if keep(&name) {
            let tensor = to_f32(&view).with_context(|| format!("tensor {name:?}"))?;
            tensors.insert(name, tensor);
        }
    }
    Ok(tensors)
}

/// Upcast one stored tensor to `f32`.
fn to_f32(view: &TensorView<'_>) -> Result<Tensor> {
    let bytes = view.data();
    let (dtype, values): (Dtype, Vec<f32>) = match view.dtype() {
        StDtype::F32 => (Dtype::F32, convert(bytes, f32::from_le_bytes)),
        StDtype::F16 => (
            Dtype::F16,
            convert(bytes, |b| f16::from_le_bytes(b).to_f32()),
        ),
        StDtype::BF16 => (
            Dtype::BF16,
            convert(bytes, |b| bf16::from_le_bytes(b).to_f32()),
        ),
        StDtype::F64 => (Dtype::F64, convert(bytes, |b| f64::from_le_bytes(b) as f32)),
        other => bail!("unsupported dtype {other:?} (weights must be F32, F16, BF16 or F64)"),
    };
    let array = ArrayD::from_shape_vec(IxDyn(view.shape()), values)
        .context("shape does not match the number of bytes")?;
    Ok(Tensor { dtype, array })
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
