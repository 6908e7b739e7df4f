//! From [`Gpt2`] to a `model.safetensors` that `transformers` loads: the
//! inverse of [`Gpt2::from_dir`], in any of the dtypes weights are kept in.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use half::{bf16, f16};
use safetensors::tensor::TensorView;

use super::{Gpt2, Parameter};
use crate::checkpoint::Dtype;
use crate::weights::{Matrix, Stored};

impl Gpt2 {
    /// Write the parameters to `path` as a safetensors file, every tensor in
    /// `dtype` (`f32`, `f16` or `bf16`; values rounded to nearest, ties to
    /// even), with the `{"format": "pt"}` metadata `transformers` expects:
    /// `GPT2LMHeadModel.from_pretrained` loads the directory holding it and
    /// its `config.json`. A model stored in `dtype` already is written as
    /// stored, bit for bit. Loading the file gives [`Gpt2::to_dtype`]`(dtype)`
    /// of this model, exactly.
    pub fn save_safetensors(&self, path: &Path, dtype: Dtype) -> Result<()> {
        ensure!(
            dtype != Dtype::F64,
            "weights are written as f32, f16 or bf16, not f64"
        );
        let st_dtype = match dtype {
            Dtype::F32 => safetensors::Dtype::F32,
            Dtype::F16 => safetensors::Dtype::F16,
            _ => safetensors::Dtype::BF16,
        };
        let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .parameters()
            .into_iter()
            .map(|(name, param)| {
                let (shape, bytes) = match param {
                    Parameter::Matrix(m) => {
                        let (r, c) = m.dim();
                        (vec![r, c], matrix_bytes(m, dtype))
                    }
                    Parameter::Vector(v) => (vec![v.len()], f32_bytes(v.iter().copied(), dtype)),
                };
                // The keys of `GPT2LMHeadModel.save_pretrained`.
                let name = match name.as_str() {
                    "lm_head.weight" => name,
                    _ => format!("transformer.{name}"),
                };
                (name, shape, bytes)
            })
            .collect();
        let views = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                let view = TensorView::new(st_dtype, shape.clone(), bytes)
                    .with_context(|| format!("tensor {name}"))?;
                Ok((name.clone(), view))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(metadata), path)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// A matrix's values as little-endian `dtype` bytes, row-major.
fn matrix_bytes(m: &Matrix, dtype: Dtype) -> Vec<u8> {
    match (m.stored(), dtype) {
        (Stored::F16(w), Dtype::F16) => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        (Stored::BF16(w), Dtype::BF16) => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        _ => f32_bytes(m.to_f32().iter().copied(), dtype),
    }
}

/// `f32` values as little-endian `dtype` bytes.
fn f32_bytes(values: impl Iterator<Item = f32>, dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F16 => values
            .flat_map(|v| f16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .flat_map(|v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        _ => values.flat_map(f32::to_le_bytes).collect(),
    }
}
