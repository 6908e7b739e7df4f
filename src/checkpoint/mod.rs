//! Checkpoint files → named `f32` arrays.
//!
//! This layer knows file formats and nothing about GPT-2: it turns a
//! `model.safetensors` or a `pytorch_model.bin` into a map from the state-dict
//! key (`h.0.attn.c_attn.weight`) to a tensor of the stored shape, in the
//! dtype it was stored in (`f32`, `f16` or `bf16`; `f64` is upcast to `f32`). The [`crate::model`] layer then
//! checks those arrays against the config and moves them into named structs.
//!
//! Both readers treat the file as untrusted input: every length, offset and
//! shape is checked against the bytes actually present before anything is
//! allocated, and the PyTorch reader never executes the pickle it parses.

use std::collections::BTreeMap;
use std::fmt;

use std::borrow::Cow;

use half::{bf16, f16};
use ndarray::{ArrayD, ArrayViewD, CowArray, IxDyn};

use crate::weights::{Matrix, Shared, SharedF32};

mod pickle;
pub mod pytorch;
pub mod safetensors;

/// Not part of the API: the restricted unpickler alone, for the fuzz targets
/// and the tests that feed it hostile bytes. (How it reads `torch.save`'s
/// pickles without executing them is told in [`pytorch`].)
#[doc(hidden)]
pub mod unpickler {
    pub use super::pickle::{load, Pickle, Value, MAX_PICKLE_LEN};
}

/// The element type of a tensor in a file, and of a weight matrix in memory
/// (`f32`, `f16`, `bf16`; `f64` is read from files only, and upcast to `f32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    F64,
}

impl Dtype {
    /// Bytes per element as stored.
    pub fn size(self) -> usize {
        match self {
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

/// `f32`, `f16` or `bf16` (also `float32`, `float16`/`half`, `bfloat16`, any
/// case): the dtypes weights can be kept in.
impl std::str::FromStr for Dtype {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> anyhow::Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Dtype::F32),
            "f16" | "float16" | "fp16" | "half" => Ok(Dtype::F16),
            "bf16" | "bfloat16" => Ok(Dtype::BF16),
            _ => anyhow::bail!("unknown dtype {name:?} (expected f32, f16 or bf16)"),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::BF16 => "bf16",
            Dtype::F64 => "f64",
        };
        f.write_str(name)
    }
}

/// One tensor read from a checkpoint: its values (row-major, the stored
/// shape) and the dtype it was stored in.
///
/// `f32` values are owned (decoded, gathered from a strided view, ...) or,
/// in a memory-mapped `model.safetensors`, read in place ([`SharedF32`]).
/// Half-precision values (`f16`, `bf16`) are **kept as stored**: their bits,
/// in place in the memory map when aligned, else copied; nothing is upcast
/// until a caller asks for `f32`s ([`Tensor::as_slice`]). `f64` is upcast to
/// `f32` when read.
#[derive(Clone)]
pub struct Tensor {
    pub dtype: Dtype,
    shape: Vec<usize>,
    values: Values,
}

#[derive(Clone)]
enum Values {
    Owned(ArrayD<f32>),
    Shared(SharedF32),
    /// The bits of `f16` or `bf16` values (`dtype` says which).
    Half(Shared<u16>),
}

impl Tensor {
    /// A tensor that owns its values. With a half-precision `dtype` the
    /// values are stored back as halves: they must be ones that were decoded
    /// from that dtype (any other is rounded to it).
    pub fn owned(dtype: Dtype, array: ArrayD<f32>) -> Self {
        let array = array.as_standard_layout().into_owned();
        let shape = array.shape().to_vec();
        let values = match dtype {
            Dtype::F16 => Values::Half(Shared::from_vec(
                array.iter().map(|&v| f16::from_f32(v).to_bits()).collect(),
            )),
            Dtype::BF16 => Values::Half(Shared::from_vec(
                array.iter().map(|&v| bf16::from_f32(v).to_bits()).collect(),
            )),
            Dtype::F32 | Dtype::F64 => Values::Owned(array),
        };
        Tensor {
            dtype,
            shape,
            values,
        }
    }

    /// A tensor of `shape` read in place; `None` when the number of values is
    /// not the number of elements.
    pub fn shared(dtype: Dtype, shape: Vec<usize>, values: SharedF32) -> Option<Self> {
        let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
        (numel == values.len()).then_some(Tensor {
            dtype,
            shape,
            values: Values::Shared(values),
        })
    }

    /// A half-precision tensor (`dtype` [`Dtype::F16`] or [`Dtype::BF16`])
    /// of `shape` from the bits of its values, in place or owned; `None` for
    /// another dtype or when the number of values is not the number of
    /// elements.
    pub fn half(dtype: Dtype, shape: Vec<usize>, bits: Shared<u16>) -> Option<Self> {
        let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
        (matches!(dtype, Dtype::F16 | Dtype::BF16) && numel == bits.len()).then_some(Tensor {
            dtype,
            shape,
            values: Values::Half(bits),
        })
    }

    /// The stored shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `f32` values, row-major, or `None` when they are stored in half
    /// precision.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.values {
            Values::Owned(a) => Some(a.as_slice().expect("kept in standard layout")),
            Values::Shared(s) => Some(s.as_slice()),
            Values::Half(_) => None,
        }
    }

    /// The bits of the half-precision values, row-major, or `None` when they
    /// are stored as `f32`.
    pub fn half_bits(&self) -> Option<&[u16]> {
        match &self.values {
            Values::Half(bits) => Some(bits.as_slice()),
            _ => None,
        }
    }

    /// The values in `f32`, row-major: borrowed, or upcast from half precision.
    pub fn as_slice(&self) -> Cow<'_, [f32]> {
        if let Some(values) = self.as_f32() {
            return Cow::Borrowed(values);
        }
        let bits = self.half_bits().expect("f32 or half");
        Cow::Owned(match self.dtype {
            Dtype::BF16 => bits.iter().map(|&b| bf16::from_bits(b).to_f32()).collect(),
            _ => bits.iter().map(|&b| f16::from_bits(b).to_f32()).collect(),
        })
    }

    /// The values in `f32`, as an array of the stored shape.
    pub fn view(&self) -> CowArray<'_, f32, IxDyn> {
        match self.as_slice() {
            Cow::Borrowed(v) => CowArray::from(
                ArrayViewD::from_shape(IxDyn(&self.shape), v)
                    .expect("the length was checked against the shape"),
            ),
            Cow::Owned(v) => CowArray::from(
                ArrayD::from_shape_vec(IxDyn(&self.shape), v)
                    .expect("the length was checked against the shape"),
            ),
        }
    }

    /// Whether the values are read in place from the file's memory map.
    pub fn is_shared(&self) -> bool {
        match &self.values {
            Values::Owned(_) => false,
            Values::Shared(_) => true,
            Values::Half(bits) => !bits.is_owned(),
        }
    }

    /// The tensor as a matrix, without a copy (shared values stay shared,
    /// halves stay halves); `None` unless it has two dimensions.
    pub fn into_matrix(self) -> Option<Matrix> {
        let &[rows, cols] = self.shape.as_slice() else {
            return None;
        };
        match self.values {
            Values::Owned(a) => a.into_dimensionality().ok().map(Matrix::from),
            Values::Shared(s) => Matrix::shared(s, (rows, cols)),
            Values::Half(bits) => Matrix::half(self.dtype, bits, (rows, cols)),
        }
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let storage = if self.is_shared() { "shared" } else { "owned" };
        write!(f, "Tensor({}, {storage}) {:?}", self.dtype, self.view())
    }
}

/// State-dict key → tensor, sorted by key.
pub type Tensors = BTreeMap<String, Tensor>;
