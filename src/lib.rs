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
//! The crate has two tiers and a proof that they agree:
//!
//! - **the reference tier**, [`reference`](mod@reference): GPT-2 as a learner reads it, in
//!   plain `ndarray` (no threads, no SIMD, no `unsafe`), one short pure
//!   function per box of the diagram below, and a whole-model
//!   [`reference::forward`] that reads top to bottom and returns every
//!   intermediate activation by name; beside each box its backward, and
//!   [`reference::loss_and_gradients`], the loss of a batch and the gradient
//!   of every parameter, the backward pass read bottom to top;
//! - **the fast model**, [`Gpt2`]: the same maths on kernels that make it
//!   faster than PyTorch on a CPU (chapter 2), with a KV cache, batches,
//!   generation and tracing;
//! - **the proof**: both are compared with PyTorch step by step, and with
//!   each other, by the tests (chapter 3).
//!
//! ## 1. The tour: GPT-2 in reading order
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
//! Each numbered box, in the order the data meets it, and the reference
//! function that computes it — the code [`reference::forward`] runs:
//!
//! | | box | reference function | shapes |
//! |---|---|---|---|
//! | (0) | text → token ids | [`Tokenizer::encode`] (and [`Tokenizer::decode`] back) | `&str` → `[T]` |
//! | (1) | token + position embeddings | [`reference::embedding`]; the tables are [`Gpt2::wte`], [`Gpt2::wpe`] | `[T]` → `[T, C]` |
//! | (2) | layer norm (`ln_1`, `ln_2`, `ln_f`) | [`reference::layer_norm`], built on [`reference::mean`] and [`reference::variance`]; weights [`weights::LayerNorm`] | `[T, C]` → `[T, C]` |
//! | (3) | linear layer `x·W + b` (`c_attn`, `c_fc`) | [`reference::conv1d`] = [`reference::matmul`] plus the bias (each entry of `matmul` is the [`reference::dot`] of a row and a column; `ndarray`'s `.dot` computes it); weights [`weights::Conv1D`] in [`model::Attention`] and [`model::Mlp`] | `[T, in]` → `[T, out]` |
//! | (4) | the attention layer: split heads, attend, merge | [`reference::causal_self_attention`]: [`reference::split_heads`], [`reference::multi_head_attention`], [`reference::merge_heads`] | `[T, C]` → `[n_head, T, d]` → `[T, C]` |
//! | (5) | scaled, causally masked scores `q·kᵀ·scale` | the first step of [`reference::attention_head`]; the factor is [`reference::attention_scale`] | `[T, d]` → `[T, T]` |
//! | (6) | softmax of each row | [`reference::softmax_rows`] (of a vector: [`reference::softmax`]) | `[T, T]` → `[T, T]` |
//! | (7) | one head, all of (5)–(6) then `·v` | [`reference::attention_head`] | `[T, d]` ×3 → `[T, d]` |
//! | (8) | output projection (`attn.c_proj`, `mlp.c_proj`) and the residual add `x = x + …` | [`reference::conv1d`] inside [`reference::block`] | `[T, C]` → `[T, C]` |
//! | (9) | the MLP and its non-linearity | [`reference::mlp`]; [`reference::gelu_new`], or the one the config names ([`config::Activation`]) through [`reference::activation`] | `[T, 4C]`, elementwise |
//! | (10) | final layer norm | [`reference::layer_norm`] with [`Gpt2::ln_f`] | `[T, C]` → `[T, C]` |
//! | (11) | the head, tied to the embedding: `· wteᵀ` | [`reference::head`] | `[T, C]` → `[T, vocab]` |
//! | (12) | next token, and the next, ... | [`generate`]: [`generate::argmax`], [`generate::process_logits`], [`generate::sample`], with a [`KvCache`] | `[vocab]` → id |
//!
//! [`reference::forward`] records every step under the names of the trace
//! table (`h.3.ln_1`, `h.3.attn.probs`, `ln_f`, `logits`: the table is in
//! [`trace`]) in an [`reference::Activations`]; the fast model records the
//! same names on request with a [`Trace`]. `cargo run --example reference`
//! prints them for a prompt; the worked examples `dot_product`, `softmax`
//! and `scaled_dot_product_attention` compute boxes (3)–(7) by hand.
//!
//! ## 2. How it is made fast
//!
//! [`Gpt2::forward_step`] runs the same boxes on private kernels (the
//! `src/kernels/` directory, outside the public API). Each kernel names the
//! reference function it replaces, and a test proves them equal:
//!
//! | box | reference | kernel (`src/kernels/`) | what makes it fast | proven equal by |
//! |---|---|---|---|---|
//! | (3)(8)(11) | [`reference::matmul`], [`reference::conv1d`], [`reference::head`] | `gemm.rs`, `linear.rs`, `half_avx512.rs`, `half_f16c.rs` | a matrix–vector kernel that streams each weight once, asking for its rows ahead (decoding), a register-tiled kernel that reads the weights in place (short prompts), the `gemm` crate's packed SIMD GEMM (long ones); the tied head reads `wte` as contiguous columns (for a batch of decoding steps, `head.rs`: register tiles of dot products, AVX-512 or AVX2, that read each row of `wte` once for the whole batch) | `tests/kernels.rs` (every path, every size threshold, bit-identical across thread counts), `tests/kernels_vs_reference.rs` (`conv1d`) |
//! | (2)(10) | [`reference::layer_norm`] | `norm.rs` | rows in parallel, sums over SIMD lanes | `tests/kernels_vs_reference.rs` |
//! | (4)–(7) | [`reference::causal_self_attention`] | `attention.rs` | heads in parallel, 64-query blocks that skip the masked half, the softmax's division moved after `·v`; a decoding step's one query runs groups of heads over the cached rows front to back (the same bits); keys and values appended to a [`KvCache`] reserved once by generation, kept as `f32` or (opt-in) rounded to `f16`/`bf16` and widened as read | `tests/kernels_vs_reference.rs` (lengths crossing 64, a cache, left padding), `tests/kernels.rs` (one query = the per-head path, bit for bit; half keys and values = their `f32` values, bit for bit), `tests/half_precision.rs` (a half cache against `transformers` with rounded keys and values) |
//! | (6) | [`reference::softmax`] | `softmax.rs`, `fastmath.rs` | a vectorisable `exp`, lane-wise max and sum, compiled for AVX-512, AVX2/FMA, AVX and portable/NEON and picked at run time (`simd.rs`) | `tests/kernels_vs_reference.rs`; `exp` and the lane sums in `tests/kernels.rs` |
//! | (9) | [`reference::activation`] | `activation.rs` | the tanh GELU as `x·σ(2u)`: one vectorisable `exp` | `tests/kernels_vs_reference.rs` |
//! | weights | — | [`weights::Matrix`] | `f32`, `f16` and `bf16` tensors used in place from a memory-mapped `model.safetensors` | `tests/model_golden.rs` (both formats), `tests/half_precision.rs` |
//! | half weights | [`weights::Matrix::to_f32`] (the reference tier upcasts) | `convert.rs`, `half_avx512.rs`, `half_f16c.rs`, `gemm.rs` | widened to `f32` as the kernels load them (`vcvtph2ps` with AVX-512 or AVX2's F16C; portable exact conversion), per vector (the few-rows kernel too with AVX-512), per 16-row block (the few-rows kernel below AVX-512), per GEMM panel | `tests/kernels.rs` (bits of the upcast product, every level), `tests/half_precision.rs` |
//!
//! Each kernel also faces PyTorch directly on the single-op goldens
//! (`tests/kernels_vs_torch.rs`). And the whole fast model equals the whole
//! reference: `tests/fast_equals_reference.rs`
//! runs both on the golden model and on one tiny model per config variant,
//! for prompts crossing every kernel threshold, with and without the cache
//! and in padded batches, and reports the worst entry.
//!
//! ## 3. The modules, bottom up
//!
//! 1. **Weights** — [`weights`]: [`weights::Matrix`] (owned, or read in place
//!    from a memory map; `f32`, `f16` or `bf16`), [`weights::LayerNorm`],
//!    [`weights::Conv1D`]. What half precision costs: [`precision`].
//! 2. **Configuration** — [`Config`]: the numbers in `config.json` that shape
//!    the model (`n_embd`, `n_head`, ...), validated.
//! 3. **Checkpoints** — [`checkpoint`]: `model.safetensors` and
//!    `pytorch_model.bin` (zip or 2019 legacy, parsed by a restricted unpickler
//!    that never executes anything) become named tensors in the dtype the file
//!    stores (`f32`, `f16`, `bf16`); those of a safetensors file stay where
//!    they lie in its memory map.
//! 4. **The reference tier** — [`reference`](mod@reference): the model in plain `ndarray`,
//!    forward ([`reference::forward`]) and backward ([`reference::loss_and_gradients`]:
//!    each box's gradient by the chain rule, into a [`reference::Gradients`]).
//! 5. **The model** — [`model`]: [`Gpt2`] holds the weights in structs named
//!    exactly like the checkpoint keys (`h[3].attn.c_attn`), and
//!    [`Gpt2::forward_step`] is the fast forward pass of the diagram above.
//!    A [`Trace`] records any named activation (`h.3.attn.probs`); a
//!    [`KvCache`] makes decoding cost one position per token.
//! 6. **Tokenizer** — [`Tokenizer`]: GPT-2's byte-level BPE through the
//!    `tokenizers` crate, equal to `transformers`' ids.
//! 7. **Generation** — [`generate`]: greedy and sampled decoding with
//!    transformers' filters (temperature, top-k, top-p, repetition penalty),
//!    stop rules, streaming text, batches.
//! 8. **Perplexity** — [`perplexity`]: how well the model predicts a text.
//! 9. **Looking inside** — [`inspect`]: the model printed as PyTorch prints
//!    it with its parameter counts ([`inspect::architecture`]), and for a
//!    prompt the residual stream, every attention head and the logit lens,
//!    layer by layer ([`inspect::inspect`]), as tables or PNG figures.
//! 10. **Changing it** — [`intervention`]: replace, add to or edit any named
//!     activation (or one head's output) as the forward pass runs, in a
//!     cache or a batch ([`Gpt2::forward_step_intervened`]); head ablation in
//!     one line, activation patching ([`inspect::patching`]) and an
//!     induction-head test ([`inspect::induction`]) on top of it.
//! 11. **Training** — [`train`]: fine-tune on a text as PyTorch would, step
//!     for step: the fixed data order, the backward pass on the kernels
//!     ([`train::loss_and_gradients`], proven equal to
//!     [`reference::loss_and_gradients`]), global-norm clipping, nanoGPT's
//!     schedule, AdamW; [`train::save_model_dir`] writes a GPT-2 directory.
//!
//! ## 4. How it is verified
//!
//! `python_ref/*.py` run the same computation in PyTorch with fixed seeds and
//! save inputs and outputs as `.npy` files under `golden/`; the tests in
//! `tests/` load them and compare with stated tolerances (`1e-5` relative for
//! a single op, `1e-4` for a whole model), printing the worst element when
//! they fail. The reference tier faces them in `tests/reference.rs` (its
//! backward pass, against PyTorch autograd, in `tests/backward.rs`), the fast
//! model in `tests/model_golden.rs`, and the two face each other in
//! `tests/fast_equals_reference.rs`. The committed test model has random
//! weights but the real vocabulary; set `GPT2_DIR` to run the same tests on a
//! real GPT-2.

pub mod checkpoint;
pub mod config;
pub mod generate;
pub mod inspect;
pub mod intervention;
#[doc(hidden)]
pub mod kernels;
pub mod model;
pub mod perplexity;
pub mod precision;
pub mod reference;
pub mod tokenizer;
pub mod trace;
pub mod train;
pub mod weights;

pub use checkpoint::Dtype;
pub use config::Config;
pub use intervention::{Intervention, Interventions};
pub use model::{Gpt2, KvCache, LoadOptions, Logits, SequenceStep};
pub use tokenizer::Tokenizer;
pub use trace::Trace;

// The README's Rust code (the program of "Using the crate from another project"
// among it) compiles: `cargo test --doc` checks it with the crate's own doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
