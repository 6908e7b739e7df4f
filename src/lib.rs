//! # gpt2-ndarray: GPT-2 from scratch on `ndarray`, checked against PyTorch
//!
//! This crate runs OpenAI's GPT-2 (any size, from the Hugging Face files) with
//! nothing but `ndarray` arrays and small functions you can read in one
//! sitting. Every number it computes has a reference computed by PyTorch /
//! `transformers` (`python_ref/`, stored in `golden/`), and the tests compare
//! them step by step.
//!
//! ```no_run
//! use gpt2_ndarray::{Gpt2, Tokenizer};
//! # fn main() -> anyhow::Result<()> {
//! let model = Gpt2::from_dir("models/gpt2")?;           // config.json + weights
//! let tokenizer = Tokenizer::from_dir("models/gpt2")?;  // vocab.json + merges.txt
//! let ids = tokenizer.encode("The capital of France is")?;
//! let logits = model.next_token_logits(&ids)?;          // [vocab]
//! let best = gpt2_ndarray::generate::argmax(logits.view()) as u32;
//! println!("{}", tokenizer.decode(&[best])?);
//! # Ok(()) }
//! ```
//!
//! ## The tour: GPT-2 in reading order
//!
//! ```text
//!  text ──► Tokenizer::encode ──► ids [T]
//!                                   │
//!           wte[ids] + wpe[0..T] ◄──┘                      embed          [T, C]
//!                  │
//!   ┌──────────────▼─────────────── for each of n_layer blocks h[i] ─────────────┐
//!   │  a = layer_norm(x, ln_1)                                     norm      [T, C]   │
//!   │  q | k | v = conv1d(a, attn.c_attn)                          linear    [T, 3C]  │
//!   │  a = multi_head_attention(q, k, v)   softmax(q·kᵀ/√d + mask)·v  attention [T, C] │
//!   │  x = x + conv1d(a, attn.c_proj)                              residual  [T, C]   │
//!   │  m = layer_norm(x, ln_2)                                                        │
//!   │  x = x + conv1d(act(conv1d(m, mlp.c_fc)), mlp.c_proj)        MLP  [T, 4C]→[T, C] │
//!   └──────────────┬──────────────────────────────────────────────────────────────────┘
//!                  ▼
//!           layer_norm(x, ln_f) · wteᵀ ──► logits [T, vocab] ──► generate ──► text
//! ```
//!
//! 1. **Building blocks** — [`blocks`]: pure functions on array views, each
//!    with its formula, shapes and a worked example, each tested alone against
//!    PyTorch. [`blocks::linear`](mod@blocks::linear) (dot product, matrix product, [`blocks::conv1d`]),
//!    [`blocks::softmax`](mod@blocks::softmax), [`blocks::norm`] ([`blocks::mean`],
//!    [`blocks::variance`], [`blocks::layer_norm`]), [`blocks::activation`]
//!    ([`blocks::gelu_new`]), [`blocks::attention`]
//!    ([`blocks::scaled_dot_product_attention`], [`blocks::multi_head_attention`]).
//! 2. **Configuration** — [`Config`]: the numbers in `config.json` that shape
//!    the model (`n_embd`, `n_head`, ...), validated.
//! 3. **Checkpoints** — [`checkpoint`]: `model.safetensors` and
//!    `pytorch_model.bin` (zip or 2019 legacy, parsed by a restricted unpickler
//!    that never executes anything) become named `f32` arrays.
//! 4. **The model** — [`model`]: [`Gpt2`] holds the weights in structs named
//!    exactly like the checkpoint keys (`h[3].attn.c_attn`), and
//!    [`Gpt2::forward_step`] is the forward pass of the diagram above, top to
//!    bottom. A [`Trace`] records any named activation (`h.3.attn.probs`); a
//!    [`KvCache`] makes decoding cost one position per token.
//! 5. **Tokenizer** — [`Tokenizer`]: GPT-2's byte-level BPE through the
//!    `tokenizers` crate, equal to `transformers`' ids.
//! 6. **Generation** — [`generate`]: greedy and sampled decoding with
//!    transformers' filters (temperature, top-k, top-p, repetition penalty),
//!    stop rules, streaming text, batches.
//!
//! ## How it is verified
//!
//! `python_ref/*.py` run the same computation in PyTorch with fixed seeds and
//! save inputs and outputs as `.npy` files under `golden/`; the tests in
//! `tests/` load them and compare with stated tolerances (`1e-5` relative for
//! a single op, `1e-4` for a whole model), printing the worst element when
//! they fail. The committed test model has random weights but the real
//! vocabulary; set `GPT2_DIR` to run the same tests on a real GPT-2.

pub mod blocks;
pub mod checkpoint;
pub mod config;
pub mod generate;
pub mod model;
pub mod perplexity;
pub mod tokenizer;
pub mod trace;

pub use config::Config;
pub use model::{Gpt2, KvCache, Logits};
pub use tokenizer::Tokenizer;
pub use trace::Trace;
