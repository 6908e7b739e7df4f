//! From a Hugging Face model directory to [`Gpt2`]: the one place where
//! checkpoint keys become struct fields.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use ndarray::{Array1, Array2};
use rayon::prelude::*;

use super::{Attention, Block, Gpt2, Mlp};
use crate::checkpoint::{
    pytorch::read_pytorch_bin, safetensors::read_safetensors, Dtype, Tensor, Tensors,
};
use crate::config::Config;
use crate::weights::{Conv1D, LayerNorm, Matrix};

/// The two weight files a GPT-2 directory may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsFormat {
    /// `model.safetensors` (memory-mapped).
    Safetensors,
    /// `pytorch_model.bin` (zip or legacy `torch.save`, read without executing the pickle).
    PytorchBin,
}

impl WeightsFormat {
    /// The file name of this format inside a model directory.
    pub fn file_name(self) -> &'static str {
        match self {
            WeightsFormat::Safetensors => "model.safetensors",
            WeightsFormat::PytorchBin => "pytorch_model.bin",
        }
    }
}

/// How [`Gpt2::from_dir_options`] loads a model directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// The weights file to read; `None`: `model.safetensors` if present,
    /// else `pytorch_model.bin`.
    pub format: Option<WeightsFormat>,
    /// The dtype to keep the weight matrices in (`f32`, `f16`, `bf16`),
    /// converted once at load; `None`: as the file stores them.
    pub dtype: Option<Dtype>,
}

/// Buffers real checkpoints carry that are not parameters: the causal mask
/// `h.{i}.attn.bias` and the constant `h.{i}.attn.masked_bias`. Never read.
fn is_buffer(key: &str) -> bool {
    key.ends_with(".attn.bias") || key.ends_with(".attn.masked_bias")
}

impl Gpt2 {
    /// Load `config.json` and the weights of a model directory, preferring
    /// `model.safetensors` over `pytorch_model.bin` when both are present.
    ///
    /// The `f32` matrices of a `model.safetensors` are **used in place**: the
    /// file is memory-mapped and the model's [`Matrix`]es read it directly (no
    /// copy, so loading GPT-2 small costs the time to map and check 498 MB, not
    /// to copy it, and the weights are resident once). As with every mmap-based
    /// loader, do not modify or truncate the file while a model read from it
    /// is alive. Matrices stored as `f16` or `bf16` are kept so, in place,
    /// and the fast model widens them to `f32` as it reads them (half the
    /// memory, about twice the decoding speed); the reference tier upcasts
    /// them. `pytorch_model.bin` is decoded into owned arrays (halves stay
    /// halves). To convert at load instead, see [`Gpt2::from_dir_as`].
    ///
    /// The files are untrusted input: loading never panics, never executes
    /// anything (a `.bin` is parsed by a restricted unpickler), never reads
    /// outside the file, and never allocates more than the bytes actually in
    /// the file justify. Every error names the file, and the tensor when one
    /// is at fault:
    ///
    /// - a missing directory, `config.json`, or weights file;
    /// - a `config.json` that is not JSON, lacks a field, or is inconsistent
    ///   ([`Config::from_json`]);
    /// - a damaged weights file: truncated, ranges out of the file or
    ///   overlapping, sizes that disagree with the bytes, an unsupported
    ///   dtype, a pickle naming anything but tensors ([`crate::checkpoint`]);
    /// - tensors that do not fit `config.json`: each missing, misshapen
    ///   (expected and found shape) or unexpected tensor, all listed at once;
    /// - **weights that are NaN or ±inf**. This is a choice: PyTorch would
    ///   load them, but a single non-finite weight turns every logit it
    ///   reaches into NaN, and generation would then quietly emit token 0
    ///   forever. Such a file is corrupt or the product of a diverged
    ///   training run; refusing it at load time says so where the cause is.
    ///   (The causal-mask buffers `h.{i}.attn.bias`, which are never read,
    ///   are not checked.)
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        ensure_dir(dir)?;
        let format = [WeightsFormat::Safetensors, WeightsFormat::PytorchBin]
            .into_iter()
            .find(|f| dir.join(f.file_name()).is_file())
            .with_context(|| {
                format!(
                    "{} has neither model.safetensors nor pytorch_model.bin",
                    dir.display()
                )
            })?;
        Self::from_dir_with(dir, format)
    }

    /// [`Gpt2::from_dir`], then the weight matrices converted once to
    /// `dtype` ([`Gpt2::to_dtype`]; nothing is converted when the file stores
    /// them in `dtype` already). With [`Dtype::F16`] or [`Dtype::BF16`] the
    /// model takes half the memory and decodes about twice as fast; the
    /// logits move by the rounding of the weights (`docs/half-precision.md`
    /// measures how much).
    pub fn from_dir_as(dir: impl AsRef<Path>, dtype: Dtype) -> Result<Self> {
        Self::from_dir_options(
            dir,
            &LoadOptions {
                dtype: Some(dtype),
                ..LoadOptions::default()
            },
        )
    }

    /// Load a model directory as `options` say: which weights file (default:
    /// as [`Gpt2::from_dir`] chooses) and which dtype to keep the weight
    /// matrices in (default: as stored).
    pub fn from_dir_options(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let model = match options.format {
            Some(format) => Self::from_dir_with(dir, format)?,
            None => Self::from_dir(dir)?,
        };
        Ok(match options.dtype {
            Some(dtype) => {
                ensure!(
                    dtype != Dtype::F64,
                    "weights are kept as f32, f16 or bf16, not f64"
                );
                model.to_dtype(dtype)
            }
            None => model,
        })
    }

    /// Load a model directory from the given weights format.
    pub fn from_dir_with(dir: impl AsRef<Path>, format: WeightsFormat) -> Result<Self> {
        let dir = dir.as_ref();
        ensure_dir(dir)?;
        let config = Config::from_file(&dir.join("config.json"))?;
        let path: PathBuf = dir.join(format.file_name());
        let keep = |key: &str| !is_buffer(key);
        let tensors = match format {
            WeightsFormat::Safetensors => read_safetensors(&path, &keep)?,
            WeightsFormat::PytorchBin => read_pytorch_bin(&path, &keep)?,
        };
        Self::from_tensors(config, tensors).with_context(|| format!("in {}", path.display()))
    }

    /// Build the model from named tensors, checking every shape against the config.
    ///
    /// Keys may carry the `transformer.` prefix or not; `lm_head.weight` is
    /// ignored when the head is tied (it is `wte`) and required when it is not.
    /// Every problem is collected before failing, so one error lists all the
    /// missing, misshapen and unexpected tensors.
    pub fn from_tensors(config: Config, tensors: Tensors) -> Result<Self> {
        config.validate()?;
        let mut store = Store::new(tensors);
        let (c, f) = (config.n_embd, config.n_inner);
        let eps = config.layer_norm_epsilon;
        let wte = store.matrix("wte.weight", [config.vocab_size, c]);
        let wpe = store.matrix("wpe.weight", [config.n_positions, c]);
        let h = (0..config.n_layer)
            .map(|i| Block {
                ln_1: store.layer_norm(&format!("h.{i}.ln_1"), c, eps),
                attn: Attention {
                    c_attn: store.conv1d(&format!("h.{i}.attn.c_attn"), c, 3 * c),
                    c_proj: store.conv1d(&format!("h.{i}.attn.c_proj"), c, c),
                },
                ln_2: store.layer_norm(&format!("h.{i}.ln_2"), c, eps),
                mlp: Mlp {
                    c_fc: store.conv1d(&format!("h.{i}.mlp.c_fc"), c, f),
                    c_proj: store.conv1d(&format!("h.{i}.mlp.c_proj"), f, c),
                },
            })
            .collect();
        let ln_f = store.layer_norm("ln_f", c, eps);
        let lm_head = if config.tie_word_embeddings {
            store.tensors.remove("lm_head.weight");
            None
        } else {
            Some(store.matrix("lm_head.weight", [config.vocab_size, c]))
        };
        let stored_bytes = store.finish()?;
        Ok(Gpt2 {
            config,
            wte,
            wpe,
            h,
            ln_f,
            lm_head,
            stored_bytes,
        })
    }
}

fn ensure_dir(dir: &Path) -> Result<()> {
    ensure!(
        dir.is_dir(),
        "model directory {} does not exist (or is not a directory)",
        dir.display()
    );
    Ok(())
}

/// The tensors not yet moved into the model, the problems found so far, and
/// the stored bytes of the tensors taken, by dtype.
struct Store {
    tensors: Tensors,
    problems: Vec<String>,
    stored_bytes: BTreeMap<Dtype, usize>,
}

impl Store {
    fn new(tensors: Tensors) -> Self {
        let tensors = tensors
            .into_iter()
            .map(|(key, t)| match key.strip_prefix("transformer.") {
                Some(rest) => (rest.to_owned(), t),
                None => (key, t),
            })
            .collect();
        Store {
            tensors,
            problems: Vec::new(),
            stored_bytes: BTreeMap::new(),
        }
    }

    /// Move out the tensor `key`, checking its shape and values.
    fn take(&mut self, key: &str, shape: &[usize]) -> Option<Tensor> {
        let Some(tensor) = self.tensors.remove(key) else {
            self.problems
                .push(format!("missing tensor {key} (expected shape {shape:?})"));
            return None;
        };
        if tensor.shape() != shape {
            self.problems.push(format!(
                "tensor {key} has shape {:?}, expected {shape:?} from config.json",
                tensor.shape()
            ));
            return None;
        }
        let bad = match (tensor.as_f32(), tensor.half_bits()) {
            (Some(values), _) => first_non_finite(values),
            (None, Some(bits)) => first_non_finite_half(bits, tensor.dtype),
            (None, None) => unreachable!("a tensor holds f32 values or half bits"),
        };
        if let Some(bad) = bad {
            self.problems.push(format!(
                "tensor {key} contains {bad} (weights must be finite)"
            ));
            return None;
        }
        *self.stored_bytes.entry(tensor.dtype).or_default() += tensor.len() * tensor.dtype.size();
        Some(tensor)
    }

    /// A weight matrix, in its stored dtype; one read in place from a memory
    /// map stays there.
    fn matrix(&mut self, key: &str, [rows, cols]: [usize; 2]) -> Matrix {
        self.take(key, &[rows, cols])
            .and_then(Tensor::into_matrix)
            .unwrap_or_else(|| Array2::zeros((0, 0)).into())
    }

    /// A vector (biases, LayerNorm gains: small, so copied).
    fn vector(&mut self, key: &str, len: usize) -> Array1<f32> {
        self.take(key, &[len])
            .map(|t| Array1::from(t.as_slice().into_owned()))
            .unwrap_or_else(|| Array1::zeros(0))
    }

    fn layer_norm(&mut self, module: &str, n: usize, eps: f32) -> LayerNorm {
        LayerNorm {
            weight: self.vector(&format!("{module}.weight"), n),
            bias: self.vector(&format!("{module}.bias"), n),
            eps,
        }
    }

    /// A `Conv1D` stores its weight `[in, out]`: no transpose needed.
    fn conv1d(&mut self, module: &str, n_in: usize, n_out: usize) -> Conv1D {
        Conv1D {
            weight: self.matrix(&format!("{module}.weight"), [n_in, n_out]),
            bias: self.vector(&format!("{module}.bias"), n_out),
        }
    }

    /// Fail with every problem found, and any tensor nobody asked for; else
    /// return the stored bytes by dtype.
    fn finish(self) -> Result<BTreeMap<Dtype, usize>> {
        let mut problems = self.problems;
        problems.extend(
            self.tensors
                .keys()
                .filter(|k| !is_buffer(k))
                .map(|k| format!("unexpected tensor {k}")),
        );
        if problems.is_empty() {
            return Ok(self.stored_bytes);
        }
        let mut msg = format!(
            "the checkpoint does not fit config.json ({} problems):",
            problems.len()
        );
        for p in problems.iter().take(20) {
            let _ = write!(msg, "\n  - {p}");
        }
        if problems.len() > 20 {
            let _ = write!(msg, "\n  - ... and {} more", problems.len() - 20);
        }
        bail!(msg)
    }
}

/// The first NaN or ±inf among `values`, if any. This reads every weight once
/// at load time, so it is written to run at memory speed: chunks in parallel,
/// and inside a chunk a test the compiler turns into SIMD. A float is NaN or
/// infinite exactly when its 8 exponent bits are all ones; adding 1 to that
/// field then carries into the sign bit.
fn first_non_finite(values: &[f32]) -> Option<f32> {
    const CHUNK: usize = 1 << 15;
    const EXPONENT: u32 = 0x7f80_0000;
    let any_non_finite = |chunk: &[f32]| {
        let carry = chunk.iter().fold(0u32, |acc, v| {
            acc | ((v.to_bits() & EXPONENT) + 0x0080_0000)
        });
        carry & 0x8000_0000 != 0
    };
    let chunk = values.par_chunks(CHUNK).find_first(|c| any_non_finite(c))?;
    chunk.iter().copied().find(|v| !v.is_finite())
}

/// [`first_non_finite`] for half-precision bits (`dtype` [`Dtype::F16`] or
/// [`Dtype::BF16`]), on the 16-bit data as stored: the same carry test, with
/// the exponent field of the format (5 bits in `f16`, 8 in `bf16`), at the
/// speed memory delivers the halves. Returns the offending value in `f32`.
fn first_non_finite_half(bits: &[u16], dtype: Dtype) -> Option<f32> {
    const CHUNK: usize = 1 << 16;
    let (exponent, lowest_bit) = match dtype {
        Dtype::BF16 => (0x7f80u16, 0x0080u16),
        _ => (0x7c00, 0x0400),
    };
    let any_non_finite = |chunk: &[u16]| {
        let carry = chunk
            .iter()
            .fold(0u16, |acc, &b| acc | ((b & exponent) + lowest_bit));
        carry & 0x8000 != 0
    };
    let chunk = bits.par_chunks(CHUNK).find_first(|c| any_non_finite(c))?;
    let to_f32 = |b: u16| match dtype {
        Dtype::BF16 => half::bf16::from_bits(b).to_f32(),
        _ => half::f16::from_bits(b).to_f32(),
    };
    chunk.iter().map(|&b| to_f32(b)).find(|v| !v.is_finite())
}
