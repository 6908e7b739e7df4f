//! The building blocks: pure functions on `ndarray` views, one module per concept.
//!
//! Each block is the Rust twin of one small C file of the original project
//! (`dot_product.c`, `softmax.c`, `scaled_dot_product_attention.c`) and is
//! checked on its own against PyTorch by `tests/blocks.rs` with the golden
//! files that `python_ref/blocks.py` writes.
//!
//! | module | concept | PyTorch twin |
//! |---|---|---|
//! | [`linear`](mod@linear) | dot product, matrix product, Conv1D `x·W + b` | `torch.dot`, `@`, `transformers.pytorch_utils.Conv1D` |
//! | [`softmax`](mod@softmax) | stable softmax of a vector / of each row | `torch.softmax` |
//! | [`norm`] | mean, biased variance, layer norm | `torch.mean`, `torch.var(unbiased=False)`, `nn.LayerNorm` |
//! | [`activation`] | `gelu_new`, exact GELU, ReLU, ... | `transformers.activations.ACT2FN` |
//! | [`attention`] | causal scaled dot-product attention, multi-head | `F.scaled_dot_product_attention(is_causal=True)` |
//! | [`matrix`] | a weight matrix, owned or read in place from a memory map | a `torch.Tensor` loaded with `mmap=True` |
//!
//! Nothing here imports the rest of the crate: a reader can study and test it alone.

pub mod activation;
pub mod attention;
pub mod fastmath;
pub mod gemm;
pub mod linear;
pub mod matrix;
pub mod norm;
pub mod simd;
pub mod softmax;

pub use activation::{gelu, gelu_fast, gelu_new, quick_gelu, relu, silu, Activation};
pub use attention::{
    causal_scores, multi_head_attention, multi_head_attention_with_maps,
    scaled_dot_product_attention, AttentionMaps,
};
pub use linear::{conv1d, dot, linear, matmul, matmul_naive, Conv1D};
pub use matrix::{Matrix, SharedBytes, SharedF32};
pub use norm::{layer_norm, mean, variance, LayerNorm};
pub use softmax::{softmax, softmax_inplace, softmax_rows, softmax_slice};
