//! The fast softmax: the twin of [`reference::softmax`].

#[cfg(doc)]
use crate::reference;
use ndarray::{Array1, ArrayView1, ArrayViewMut1};

use super::fastmath::{exp_sum, max_lanes, scale};

/// [`reference::softmax`], fast: `softmax(x)ᵢ = exp(xᵢ - m) / Σⱼ exp(xⱼ - m)`, `m = maxⱼ xⱼ`.
///
/// Shapes: `[n]` → `[n]`. Subtracting the maximum changes nothing
/// mathematically (the factor `exp(-m)` cancels) but keeps every exponent
/// `≤ 0`, so `exp` never overflows, even for entries of `±1e4`; the largest
/// entry becomes `exp(0) = 1`, so the sum is at least 1.
///
/// Entries of `-inf` (masked positions) get probability exactly 0. A vector
/// whose entries are all `-inf` (nothing may be attended to) gives all zeros
/// rather than PyTorch's NaN, so one fully masked row cannot poison a batch.
pub fn softmax(x: ArrayView1<f32>) -> Array1<f32> {
    let mut y = x.to_owned();
    softmax_inplace(y.view_mut());
    y
}

/// [`softmax`] in place. (Attention runs the same steps on each row of
/// scores, with the scaling fused into the first and the division by the sum
/// moved after the product with `v`: see [`super::attention`].)
///
/// Three passes over the row: the maximum, then `eˣ⁻ᵐ` and their sum, then the
/// scaling by `1/sum` — each a loop the compiler vectorises (the maximum and
/// the sum over 16 lanes, the exponential [`fastmath::exp`](super::fastmath::exp)).
pub fn softmax_inplace(mut x: ArrayViewMut1<f32>) {
    match x.as_slice_mut() {
        Some(row) => softmax_slice(row),
        None => {
            let mut row = x.to_vec();
            softmax_slice(&mut row);
            x.assign(&ArrayView1::from(&row[..]));
        }
    }
}

/// [`softmax_inplace`] on a contiguous row.
pub fn softmax_slice(x: &mut [f32]) {
    let m = max_lanes(x);
    if m == f32::NEG_INFINITY {
        x.fill(0.0);
        return;
    }
    let sum = exp_sum(x, m);
    scale(x, 1.0 / sum);
}
