//! Numerically stable softmax of a vector and of each row of a matrix.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, Axis};

/// Softmax of a vector: `softmax(x)ᵢ = exp(xᵢ - m) / Σⱼ exp(xⱼ - m)`, `m = maxⱼ xⱼ`.
///
/// Shapes: `[n]` → `[n]`. Subtracting the maximum changes nothing
/// mathematically (the factor `exp(-m)` cancels) but keeps every exponent
/// `≤ 0`, so `exp` never overflows, even for entries of `±1e4`; the largest
/// entry becomes `exp(0) = 1`, so the sum is at least 1.
///
/// Entries of `-inf` (masked positions) get probability exactly 0. A vector
/// whose entries are all `-inf` (nothing may be attended to) gives all zeros
/// rather than PyTorch's NaN, so one fully masked row cannot poison a batch.
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::blocks::softmax;
/// let p = softmax(array![1.0, 2.0, 3.0].view());
/// // exp([-2, -1, 0]) / (0.1353 + 0.3679 + 1) = [0.0900, 0.2447, 0.6652]
/// assert!((p[2] - 0.665_240_9).abs() < 1e-6);
/// ```
pub fn softmax(x: ArrayView1<f32>) -> Array1<f32> {
    let mut y = x.to_owned();
    softmax_inplace(y.view_mut());
    y
}

/// [`softmax`] over the last axis of a matrix: each row `[n]` independently.
///
/// Shapes: `[m, n]` → `[m, n]`; every row sums to 1.
pub fn softmax_rows(x: ArrayView2<f32>) -> Array2<f32> {
    let mut y = x.to_owned();
    for row in y.axis_iter_mut(Axis(0)) {
        softmax_inplace(row);
    }
    y
}

/// [`softmax`] in place, the form the attention kernel uses on each row of scores.
pub fn softmax_inplace(mut x: ArrayViewMut1<f32>) {
    let max = x.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if max == f32::NEG_INFINITY {
        x.fill(0.0);
        return;
    }
    let mut sum = 0.0;
    x.mapv_inplace(|v| {
        let e = (v - max).exp();
        sum += e;
        e
    });
    let inv = 1.0 / sum;
    x.mapv_inplace(|e| e * inv);
}
