//! Numerically stable softmax of a vector and of each row of a matrix.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, Axis};

use super::fastmath::{exp_sum, max_lanes, scale};

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
/// // torch.softmax(torch.tensor([1., 2., 3.]), 0) = [0.09003057, 0.24472848, 0.66524094]
/// for (got, want) in p.iter().zip([0.090_030_57, 0.244_728_48, 0.665_240_94]) {
///     assert!((got - want).abs() < 1e-6);
/// }
/// // No overflow: torch.softmax(torch.tensor([1000., 1001.]), 0) = [0.26894143, 0.73105860]
/// let big = softmax(array![1000.0, 1001.0].view());
/// assert!((big[0] - 0.268_941_43).abs() < 1e-6 && (big[1] - 0.731_058_6).abs() < 1e-6);
/// ```
pub fn softmax(x: ArrayView1<f32>) -> Array1<f32> {
    let mut y = x.to_owned();
    softmax_inplace(y.view_mut());
    y
}

/// [`softmax`] over the last axis of a matrix: each row `[n]` independently.
///
/// Shapes: `[m, n]` → `[m, n]`; every row sums to 1.
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::blocks::softmax_rows;
/// let p = softmax_rows(array![[1.0, 2.0, 3.0], [0.0, 0.0, f32::NEG_INFINITY]].view());
/// // torch.softmax(torch.tensor([[1., 2., 3.], [0., 0., -inf]]), -1)
/// //     = [[0.09003057, 0.24472848, 0.66524094], [0.5, 0.5, 0.0]]
/// assert!((p[[0, 0]] - 0.090_030_57).abs() < 1e-6);
/// assert_eq!(p.row(1), array![0.5, 0.5, 0.0]); // a masked entry gets exactly 0
/// ```
pub fn softmax_rows(x: ArrayView2<f32>) -> Array2<f32> {
    let mut y = x.as_standard_layout().into_owned();
    for row in y.axis_iter_mut(Axis(0)) {
        softmax_inplace(row);
    }
    y
}

/// [`softmax`] in place. (Attention runs the same steps on each row of
/// scores, with the scaling fused into the first and the division by the sum
/// moved after the product with `v`: see [`super::attention`].)
///
/// Three passes over the row: the maximum, then `eˣ⁻ᵐ` and their sum, then the
/// scaling by `1/sum` — each a loop the compiler vectorises (the maximum and
/// the sum over 16 lanes, the exponential [`fastmath::exp`](super::fastmath::exp)).
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::blocks::softmax_inplace;
/// let mut x = array![5.0, 1.0, -3.0];
/// softmax_inplace(x.view_mut());
/// // torch.softmax(torch.tensor([5., 1., -3.]), 0) = [0.98169035, 0.01798029, 0.00032932]
/// for (got, want) in x.iter().zip([0.981_690_35, 0.017_980_29, 0.000_329_32]) {
///     assert!((got - want).abs() < 1e-6);
/// }
/// ```
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
