//! The fast matrix product and linear layer: the twins of
//! [`reference::matmul`] and [`reference::conv1d`].

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use super::gemm::{matmul_into, matmul_weight_into, Output};
#[cfg(doc)]
use crate::reference;
use crate::weights::{Conv1D, Stored};

/// [`reference::matmul`], fast: `C = A · B`, `[m, k]·[k, n]` → `[m, n]`.
///
/// Any strides, so a transposed view (`w.t()`) costs no copy. With a few rows
/// (decoding) it streams `b` once through a matrix–vector kernel; with up to
/// 32 (a short prompt) a register-tiled kernel reads a row-major `b` in place;
/// with more it runs the `gemm` crate's packed AVX-512 or AVX2/FMA GEMM on the current thread
/// pool — see [`super::gemm`]. The result never depends on the number of
/// threads. Proven equal to the reference by `tests/kernels.rs`.
pub fn matmul(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
    let mut c = Array2::zeros((a.nrows(), b.ncols()));
    matmul_into(a, b, c.view_mut(), Output::Overwrite);
    c
}

/// [`matmul`] with a weight matrix as it is stored (`f32`, `f16`, `bf16`;
/// `w.t()` for the head): `[m, k]·[k, n]` → `[m, n]`, the halves widened to
/// `f32` as they are read ([`super::convert`]). Proven equal to the
/// reference on the upcast matrix by `tests/kernels.rs`.
pub fn matmul_weight(a: ArrayView2<f32>, w: Stored<'_>) -> Array2<f32> {
    let mut c = Array2::zeros((a.nrows(), w.dim().1));
    matmul_weight_into(a, w, c.view_mut(), Output::Overwrite);
    c
}

/// [`reference::conv1d`], fast: `y = x · W + b`, `x: [T, in]` → `[T, out]`.
///
/// Every row starts as `b`, then `x·W` is added into it: the product's
/// kernels add into their output, so the bias costs no extra pass over `y`.
/// The weight is read as stored (`f32`, `f16` or `bf16`).
pub fn conv1d(x: ArrayView2<f32>, layer: &Conv1D) -> Array2<f32> {
    let mut y = Array2::zeros((x.nrows(), layer.n_out()));
    y.axis_iter_mut(Axis(0))
        .into_par_iter()
        .with_min_len(64)
        .for_each(|mut row| row.assign(&layer.bias));
    matmul_weight_into(x, layer.weight.stored(), y.view_mut(), Output::Accumulate); // [T, in] · [in, out]
    y
}
