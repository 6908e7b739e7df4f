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
//!  text ──► Tokenizer::encode ──► ids [T]                                       (0)
//!                                   │
//!           wte[ids] + wpe[0..T] ◄──┘                                           (1)   [T, C]
//!                  │
//!   ┌──────────────▼──────────── for each of n_layer blocks h[i] ───────────────────────────┐
//!   │  a = layer_norm(x, ln_1)                                    (2)       [T, C]          │
//!   │  q | k | v = conv1d(a, attn.c_attn)                         (3)       [T, 3C]         │
//!   │  a = multi_head_attention(q, k, v)                          (4)       [T, C]          │
//!   │      per head: softmax(q·kᵀ/√d + causal mask)·v             (5)(6)(7) [T, T]          │
//!   │  x = x + conv1d(a, attn.c_proj)               residual      (8)       [T, C]          │
//!   │  m = layer_norm(x, ln_2)                                    (2)       [T, C]          │
//!   │  x = x + conv1d(gelu_new(conv1d(m, mlp.c_fc)), mlp.c_proj)  (3)(9)(8) [T, 4C]→[T, C]  │
//!   └──────────────┬────────────────────────────────────────────────────────────────────────┘
//!                  ▼
//!           layer_norm(x, ln_f) · wteᵀ ──► logits [T, vocab]                     (10)(11)
//!                                            │
//!                                            ▼
//!                   softmax, sample or argmax ──► next token ──► text           (12)
//! ```
//!
//! Each numbered box, where it lives, in the order the data meets it:
//!
//! | | box | function | shapes |
//! |---|---|---|---|
//! | (0) | text → token ids | [`Tokenizer::encode`] (and [`Tokenizer::decode`] back) | `&str` → `[T]` |
//! | (1) | token + position embeddings | the first step of [`Gpt2::forward_step`]; the tables are [`Gpt2::wte`], [`Gpt2::wpe`] | `[T]` → `[T, C]` |
//! | (2) | layer norm (`ln_1`, `ln_2`, `ln_f`) | [`blocks::layer_norm`], built on [`blocks::mean`] and [`blocks::variance`]; weights [`LayerNorm`](blocks::LayerNorm) | `[T, C]` → `[T, C]` |
//! | (3) | linear layer `x·W + b` (`c_attn`, `c_fc`) | [`blocks::conv1d`] = [`blocks::linear`](fn@blocks::linear), itself [`blocks::matmul`] of [`blocks::dot`]s; weights [`Conv1D`](blocks::Conv1D) in [`model::Attention`] and [`model::Mlp`] | `[T, in]` → `[T, out]` |
//! | (4) | multi-head attention: split heads, attend, merge | [`blocks::multi_head_attention`] ([`blocks::multi_head_attention_with_maps`] keeps the maps) | `[T, C]` ×3 → `[T, C]` |
//! | (5) | scaled, causally masked scores `q·kᵀ/√d` | [`blocks::causal_scores`] | `[T, d]` → `[T, T]` |
//! | (6) | softmax of each row | [`blocks::softmax_inplace`] (also [`blocks::softmax`](fn@blocks::softmax), [`blocks::softmax_rows`]) | `[T, T]` → `[T, T]` |
//! | (7) | one head, all of (5)–(6) then `·v` | [`blocks::scaled_dot_product_attention`] | `[T, d]` ×3 → `[T, d]` |
//! | (8) | output projection (`attn.c_proj`, `mlp.c_proj`) and the residual add `x = x + …` | [`blocks::conv1d`], inside [`Gpt2::forward_step`]'s block loop over [`Gpt2::h`] ([`model::Block`]) | `[T, C]` → `[T, C]` |
//! | (9) | the MLP's non-linearity | [`blocks::gelu_new`], or the one the config names: [`blocks::Activation`] | elementwise, `[T, 4C]` |
//! | (10) | final layer norm | [`blocks::layer_norm`] with [`Gpt2::ln_f`] | `[T, C]` → `[T, C]` |
//! | (11) | the head, tied to the embedding: `· wteᵀ` | the last step of [`Gpt2::forward_step`]; for the last position only, [`Logits::Last`] ([`inspect::logit_lens`] applies the same head to any layer) | `[T, C]` → `[T, vocab]` |
//! | (12) | next token, and the next, ... | [`generate`]: [`generate::argmax`], [`generate::process_logits`], [`generate::sample`], with a [`KvCache`] | `[vocab]` → id |
//!
//! Every one of these steps can be recorded by name with a [`Trace`]
//! (`h.3.ln_1`, `h.3.attn.probs`, `ln_f`, `logits`: the table is in
//! [`trace`]), which is how the tests compare them with PyTorch one by one.
//!
//! ## The modules, bottom up
//!
//! 1. **Building blocks** — [`blocks`]: pure functions on array views, each
//!    with its formula, shapes and a worked example whose numbers come from
//!    PyTorch, each tested alone against PyTorch.
//!    [`blocks::linear`](mod@blocks::linear) (dot product, matrix product, [`blocks::conv1d`]),
//!    [`blocks::softmax`](mod@blocks::softmax), [`blocks::norm`] ([`blocks::mean`],
//!    [`blocks::variance`], [`blocks::layer_norm`]), [`blocks::activation`]
//!    ([`blocks::gelu_new`]), [`blocks::attention`]
//!    ([`blocks::scaled_dot_product_attention`], [`blocks::multi_head_attention`]).
//!    [`seed_project`] maps them to the C files of the project this crate grew from.
//!    Underneath, the fast paths stay inside the blocks: [`blocks::gemm`] (a
//!    matrix–vector kernel that streams each weight once for decoding, a
//!    register-tiled kernel that reads the weights in place for short prompts,
//!    the `gemm` crate's packed SIMD GEMM for long ones), [`blocks::fastmath`]
//!    (sums over SIMD lanes and a vectorisable `exp`, compiled for AVX-512,
//!    AVX2/FMA, AVX and portable/NEON and picked at run time by
//!    [`blocks::simd`]) and [`blocks::Matrix`] (weights read in place
//!    from a memory-mapped `model.safetensors`).
//! 2. **Configuration** — [`Config`]: the numbers in `config.json` that shape
//!    the model (`n_embd`, `n_head`, ...), validated.
//! 3. **Checkpoints** — [`checkpoint`]: `model.safetensors` and
//!    `pytorch_model.bin` (zip or 2019 legacy, parsed by a restricted unpickler
//!    that never executes anything) become named `f32` tensors; those of an
//!    `f32` safetensors file stay where they lie in its memory map.
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
//! 7. **Perplexity** — [`perplexity`]: how well the model predicts a text.
//! 8. **Looking inside** — [`inspect`]: the model printed as PyTorch prints
//!    it with its parameter counts ([`inspect::architecture`]), and for a
//!    prompt the residual stream, every attention head and the logit lens,
//!    layer by layer ([`inspect::inspect`]), as tables or PNG figures.
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
pub mod inspect;
pub mod model;
pub mod perplexity;
pub mod seed_project;
pub mod tokenizer;
pub mod trace;

pub use config::Config;
pub use model::{Gpt2, KvCache, Logits};
pub use tokenizer::Tokenizer;
pub use trace::Trace;
