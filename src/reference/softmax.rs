//! Softmax: scores to probabilities, and its backward.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use super::dot;

/// `softmax(x)ᵢ = exp(xᵢ - m) / Σⱼ exp(xⱼ - m)`, `m = maxⱼ xⱼ`. Shapes: `[n]` → `[n]`.
///
/// Subtracting the maximum changes nothing mathematically (it cancels between
/// numerator and denominator) but keeps `exp` from overflowing: the largest
/// term becomes `exp(0) = 1`. An entry of `-∞` (a masked score) gets
/// probability 0. At least one entry must be finite.
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::reference::softmax;
/// let p = softmax(array![1.0, 2.0, f32::NEG_INFINITY].view());
/// // torch.softmax(torch.tensor([1., 2., -inf]), 0) = [0.2689414, 0.7310586, 0.]
/// assert!((p[0] - 0.268_941_4).abs() < 1e-7 && (p[1] - 0.731_058_6).abs() < 1e-7 && p[2] == 0.0);
/// ```
pub fn softmax(x: ArrayView1<f32>) -> Array1<f32> {
    let m = x.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let e = x.mapv(|v| (v - m).exp());
    let sum = e.sum();
    e / sum
}

/// [`softmax`] of each row: `[T, n]` → `[T, n]` (attention's scores to probabilities).
pub fn softmax_rows(x: ArrayView2<f32>) -> Array2<f32> {
    let mut p = Array2::zeros(x.raw_dim());
    for (mut p_row, x_row) in p.axis_iter_mut(Axis(0)).zip(x.axis_iter(Axis(0))) {
        p_row.assign(&softmax(x_row));
    }
    p
}

/// The backward of [`softmax`]: from `p = softmax(x)` and `dp = ∂loss/∂p`,
/// `∂x = p ⊙ (dp - p·dp)`. Shapes: `[n]`, `[n]` → `[n]`.
///
/// Every `pᵢ` depends on every `xⱼ`: `∂pᵢ/∂xⱼ = pᵢ(δᵢⱼ - pⱼ)`, so
/// `∂xⱼ = Σᵢ dpᵢ·pᵢ(δᵢⱼ - pⱼ) = pⱼ(dpⱼ - Σᵢ pᵢ dpᵢ)`. Only `p` is needed, not
/// `x`; an entry with `p = 0` (a masked score) gets gradient 0.
pub fn softmax_backward(p: ArrayView1<f32>, dp: ArrayView1<f32>) -> Array1<f32> {
    let p_dot_dp = dot(p, dp);
    &p * &dp.mapv(|d| d - p_dot_dp)
}

/// [`softmax_backward`] of each row: `p, dp: [T, n]` → `[T, n]`.
pub fn softmax_rows_backward(p: ArrayView2<f32>, dp: ArrayView2<f32>) -> Array2<f32> {
    let mut dx = Array2::zeros(p.raw_dim());
    for ((mut dx_row, p_row), dp_row) in dx.rows_mut().into_iter().zip(p.rows()).zip(dp.rows()) {
        dx_row.assign(&softmax_backward(p_row, dp_row));
    }
    dx
}
