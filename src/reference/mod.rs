//! # The reference tier: GPT-2 as a learner reads it
//!
//! GPT-2's forward and backward passes in plain `ndarray`, one short pure
//! function per box of the diagram, each with its formula and shapes. No
//! threads, no SIMD code,
//! no `unsafe`, none of this crate's kernels: every sum is an iterator's, an
//! `ndarray` `.sum()`, or a matrix product by `ndarray`'s `.dot` (which hands
//! `f32` products to the `matrixmultiply` crate, single-threaded here), and
//! every non-linearity is the textbook formula. It is the statement of
//! the maths that the fast model ([`Gpt2::forward`], built on the private kernels
//! of `src/kernels/`) is proven equal to, by `tests/fast_equals_reference.rs`,
//! and it is itself checked step by step against PyTorch by
//! `tests/reference.rs` (the backward pass by `tests/backward.rs`).
//!
//! Read it bottom up, then [`forward`] top to bottom. Each box's backward —
//! the gradient of its inputs and weights from the gradient of its output, by
//! the chain rule written out in its doc comment — sits beside it, in the same
//! file:
//!
//! | box | function | backward | shapes |
//! |---|---|---|---|
//! | dot product, matrix product | [`dot`], [`matmul`] | [`matmul_backward`] | `[n]·[n]`, `[m, k]·[k, n]` |
//! | linear layer `x·W + b` (`c_attn`, `c_proj`, `c_fc`) | [`conv1d`] | [`conv1d_backward`] | `[T, in]` → `[T, out]` |
//! | softmax | [`softmax`], [`softmax_rows`] | [`softmax_backward`], [`softmax_rows_backward`] | `[n]`, `[T, n]` |
//! | layer norm (`ln_1`, `ln_2`, `ln_f`) | [`layer_norm`] over [`mean`], [`variance`] | [`layer_norm_backward`] | `[T, C]` |
//! | the MLP's non-linearity | [`activation`]: [`gelu_new`], [`gelu`], [`gelu_fast`], [`quick_gelu`], [`relu`], [`silu`] | [`activation_backward`]: [`gelu_new_derivative`], [`gelu_derivative`], [`gelu_fast_derivative`], [`quick_gelu_derivative`], [`relu_derivative`], [`silu_derivative`] | elementwise |
//! | token + position embedding | [`embedding`] | [`embedding_backward`] (scatter-add) | `[T]` → `[T, C]` |
//! | one head of causal attention | [`attention_head`], scaled by [`attention_scale`] | [`attention_head_backward`] | `[T, d]` ×3 → `[T, d]` |
//! | heads apart and together | [`split_heads`], [`multi_head_attention`], [`merge_heads`] | [`split_heads_backward`], [`multi_head_attention_backward`], [`merge_heads_backward`] | `[T, C]` ↔ `[n_head, T, d]` |
//! | the attention layer | [`causal_self_attention`] | [`causal_self_attention_backward`] | `[T, C]` → `[T, C]` |
//! | the feed-forward network | [`mlp`] | [`mlp_backward`] | `[T, C]` → `[T, n_inner]` → `[T, C]` |
//! | a transformer block, its residual adds | [`block`] | [`block_backward`] | `[T, C]` → `[T, C]` |
//! | the language-model head (tied to `wte`, or `lm_head`) | [`head`] | [`head_backward`] | `[T, C]` → `[T, vocab]` |
//! | the loss: cross-entropy against the next tokens | [`cross_entropy`] | [`cross_entropy_backward`] | `[N, vocab]` → scalar |
//! | the whole model, every step kept | [`forward_steps`] → [`ModelSteps`] | [`backward`] → [`Gradients`] | `[T]` → `[T, vocab]` |
//! | the whole model, every step by name | [`forward`] → [`Activations`] | | `[T]` → `[T, vocab]` |
//! | a training batch's loss and gradients | | [`loss_and_gradients`] | `[B, T]` → scalar, [`Gradients`] |
//!
//! The backward pass is the forward read in reverse: [`loss_and_gradients`]
//! runs [`forward_steps`] on each row of the batch, takes the loss and its
//! gradient with respect to the logits, and hands each row's part to
//! [`backward`], which undoes the head, `ln_f`, the blocks last to first, and
//! the embedding, adding every parameter's gradient into one [`Gradients`]
//! (named and shaped like the checkpoint's parameters). `tests/backward.rs`
//! checks each backward function, and the whole model's loss and gradients,
//! against PyTorch autograd (`python_ref/grads.py`, `golden/grads/`).
//!
//! Every config the crate accepts runs here: `layer_norm_epsilon` (in each
//! [`LayerNorm`]), `activation_function`, `n_inner`, `scale_attn_weights`,
//! `scale_attn_by_inverse_layer_idx`, `reorder_and_upcast_attn` (see
//! [`attention_scale`]) and an untied `lm_head`.
//!
//! ```no_run
//! use gpt2_ndarray::{reference, Gpt2};
//! # fn main() -> anyhow::Result<()> {
//! let model = Gpt2::from_dir("models/kjv-gpt2")?;
//! let acts = reference::forward(&model, &[818, 262, 3726]); // "In the beginning"
//! println!("{:?}", acts.get("h.0.attn.probs").unwrap().shape()); // [n_head, 3, 3]
//! let last = acts.logits().row(2).to_owned();
//! # Ok(()) }
//! ```
//!
//! ## Where the original C project went
//!
//! This crate grew out of a small learning project: GPT-2's next-token
//! prediction first run through `transformers`, then its building blocks
//! rewritten in plain C, each checked against PyTorch by a short Python
//! script. Its files and their twins here:
//!
//! | C file | what it did | here | worked example |
//! |---|---|---|---|
//! | `dot_product.c` | 1-D dot product, then the 2-D product | [`dot`], [`matmul`], and GPT-2's linear layer [`conv1d`] | `cargo run --example dot_product` |
//! | `softmax.c` | softmax of a vector, then of each row | [`softmax`], [`softmax_rows`] | `cargo run --example softmax` |
//! | `scaled_dot_product_attention.c` | `softmax(q·kᵀ/√d)·v` | [`attention_head`], and the multi-head form GPT-2 runs, [`multi_head_attention`] | `cargo run --example scaled_dot_product_attention` |
//! | its utils | mean, variance, layer norm | [`mean`], [`variance`] (biased, as `nn.LayerNorm` uses it), [`layer_norm`] | part 2 of the attention example |
//! | `dot_product.py`, `scaled_dot_product.py` | the same in PyTorch, to check the C | `python_ref/blocks.py` writes inputs and PyTorch's outputs to `golden/blocks/`; `tests/reference.rs` compares every element | |
//! | `train_gpt2` (inference with `transformers`) | the whole model's prediction | [`forward`], checked step by step against `transformers`' `GPT2LMHeadModel` (`python_ref/export_model.py`) | `cargo run --example reference` |
//!
//! The C checks compared a few printed numbers; these compare every element,
//! on the edges each case is named after (one element, fewer queries than
//! keys, rows of `±1e4`, all-equal rows, `-inf` from a mask, a layer norm
//! whose `ε` dominates).
//!
//! The model's weights are read from the same structs the fast model uses
//! (imported in the one `use` line below).
#![deny(unsafe_code)]

use crate::{
    config::{Activation, Config},
    model::{Attention, Block, Gpt2, Mlp, BLOCK_PARAMETERS},
    weights::{Conv1D, LayerNorm},
};

mod activation;
mod attention;
mod gpt2;
mod gradients;
mod linear;
mod loss;
mod norm;
mod softmax;

pub use activation::{
    activation, activation_backward, gelu, gelu_derivative, gelu_fast, gelu_fast_derivative,
    gelu_new, gelu_new_derivative, quick_gelu, quick_gelu_derivative, relu, relu_derivative,
    sigmoid, silu, silu_derivative,
};
pub use attention::{
    attention_head, attention_head_backward, attention_scale, causal_self_attention,
    causal_self_attention_backward, merge_heads, merge_heads_backward, multi_head_attention,
    multi_head_attention_backward, split_heads, split_heads_backward, AttentionSteps, Head, Heads,
};
pub use gpt2::{
    backward, block, block_backward, embedding, embedding_backward, forward, forward_steps, head,
    head_backward, loss_and_gradients, mlp, mlp_backward, Activations, BlockSteps, MlpSteps,
    ModelSteps,
};
pub use gradients::{BlockGradients, Conv1DGradients, Gradients, LayerNormGradients};
pub use linear::{conv1d, conv1d_backward, dot, matmul, matmul_backward};
pub use loss::{cross_entropy, cross_entropy_backward};
pub use norm::{layer_norm, layer_norm_backward, mean, variance};
pub use softmax::{softmax, softmax_backward, softmax_rows, softmax_rows_backward};
