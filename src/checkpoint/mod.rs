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

use ndarray::ArrayD;

pub mod pickle;
pub mod pytorch;
pub mod safetensors;

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
#[derive(Clone, Debug)]
pub struct Tensor {
    pub dtype: Dtype,
    pub array: ArrayD<f32>,
}

/// State-dict key → tensor, sorted by key.
pub type Tensors = BTreeMap<String, Tensor>;
