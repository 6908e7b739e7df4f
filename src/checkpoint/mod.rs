//! Checkpoint files → named `f32` arrays.
//!
//! This layer knows file formats and nothing about GPT-2: it turns a
//! `model.safetensors` or a `pytorch_model.bin` into a map from the state-dict
//! key (`h.0.attn.c_attn.weight`) to an `f32` array of the stored shape,
//! upcasting half-precision storage on the way. The [`crate::model`] layer then
//! checks those arrays against the config and moves them into named structs.
//!
//! Both readers treat the file as untrusted input: every length, offset and
//! shape is checked against the bytes actually present before anything is
//! allocated, and the PyTorch reader never executes the pickle it parses.

use std::collections::BTreeMap;
use std::fmt;

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use crate::weights::{Matrix, SharedF32};

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

/// The element type a tensor had in the file, before it was upcast to `f32`.
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

/// One tensor read from a checkpoint: its values as `f32` (row-major, the
/// stored shape) and the dtype it was stored in.
///
/// The values are owned (decoded from half precision, gathered from a strided
/// view, ...) or, for `f32` data in a memory-mapped `model.safetensors`, read
/// in place ([`SharedF32`]): nothing is copied until a caller asks for an
/// owned array.
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
}

impl Tensor {
    /// A tensor that owns its values.
    pub fn owned(dtype: Dtype, array: ArrayD<f32>) -> Self {
        let array = array.as_standard_layout().into_owned();
        Tensor {
            dtype,
            shape: array.shape().to_vec(),
            values: Values::Owned(array),
        }
    }

    /// A tensor of `shape` read in place; `None` when the number of values is
    /// not the number of elements.
    pub fn shared(dtype: Dtype, shape: Vec<usize>, values: SharedF32) -> Option<Self> {
        let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
        (numel == values.as_slice().len()).then_some(Tensor {
            dtype,
            shape,
            values: Values::Shared(values),
        })
    }

    /// The stored shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major.
    pub fn as_slice(&self) -> &[f32] {
        match &self.values {
            Values::Owned(a) => a.as_slice().expect("kept in standard layout"),
            Values::Shared(s) => s.as_slice(),
        }
    }

    /// The values as an array of the stored shape.
    pub fn view(&self) -> ArrayViewD<'_, f32> {
        ArrayViewD::from_shape(IxDyn(&self.shape), self.as_slice())
            .expect("the length was checked against the shape")
    }

    /// Whether the values are read in place from the file's memory map.
    pub fn is_shared(&self) -> bool {
        matches!(self.values, Values::Shared(_))
    }

    /// The tensor as a matrix, without a copy (shared values stay shared);
    /// `None` unless it has two dimensions.
    pub fn into_matrix(self) -> Option<Matrix> {
        let &[rows, cols] = self.shape.as_slice() else {
            return None;
        };
        match self.values {
            Values::Owned(a) => a.into_dimensionality().ok().map(Matrix::from),
            Values::Shared(s) => Matrix::shared(s, (rows, cols)),
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
