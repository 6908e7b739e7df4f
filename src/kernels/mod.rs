//! The kernel tier: what makes the model fast. **Not part of the API.**
//!
//! Every function here computes what a function of [`crate::reference`]
//! computes, faster: SIMD loops chosen at run time, rayon threads, a GEMM and
//! register-tiled products, attention that never builds a `[T, T]` matrix it
//! does not need. Each names the reference function it replaces; the tests
//! prove them equal (`tests/kernels.rs` and `tests/kernels_vs_reference.rs`
//! kernel by kernel, across every size threshold;
//! `tests/fast_equals_reference.rs` for the whole model). The
//! crate's front page, chapter "How it is made fast", walks through them.
//!
//! | kernel | replaces | proven equal by |
//! |---|---|---|
//! | [`linear::matmul`], [`gemm`] (and `head.rs`, the tied head of a batch of decoding steps) | [`reference::matmul`] | `tests/kernels.rs` |
//! | [`linear::conv1d`] | [`reference::conv1d`] | `tests/kernels_vs_reference.rs` |
//! | [`norm::layer_norm`] | [`reference::layer_norm`] | `tests/kernels_vs_reference.rs` |
//! | [`softmax::softmax`] | [`reference::softmax`] | `tests/kernels_vs_reference.rs` |
//! | `Activation::apply_inplace` ([`activation`]) | [`reference::activation`] | `tests/kernels_vs_reference.rs` |
//! | [`attention::attend`] | [`reference::split_heads`] → [`reference::multi_head_attention`] → [`reference::merge_heads`] | `tests/kernels_vs_reference.rs` |
//! | [`convert`] (`f16`/`bf16` → `f32` as the kernels load, every product above on half weights) | `Matrix::to_f32` (the `half` crate), [`reference::matmul`] on the upcast | `tests/kernels.rs` |
//! | [`fastmath`] (lane sums, `exp`) | `ndarray`'s `.sum()`, `f32::exp` | `tests/kernels.rs` |
//!
//! The SIMD loops are compiled for AVX-512, AVX2/FMA, AVX and portable/NEON
//! and picked at run time by [`simd`]; `tests/kernels.rs` runs every level
//! the CPU has.
//!
//! The module is public but hidden (`#[doc(hidden)]`, no semver promise) only
//! so that the kernel tests and `examples/bench.rs` can reach the kernels.

#[cfg(doc)]
use crate::reference;

pub mod activation;
pub mod attention;
pub mod convert;
pub mod fastmath;
pub mod gemm;
#[cfg(target_arch = "x86_64")]
mod half_avx512;
#[cfg(target_arch = "x86_64")]
mod half_f16c;
mod head;
pub mod linear;
pub mod norm;
pub mod simd;
pub mod softmax;

pub use attention::{attend, AttentionMaps};
pub use linear::{conv1d, matmul, matmul_weight};
pub use norm::layer_norm;
pub use softmax::{softmax, softmax_inplace, softmax_slice};
