//! Cross-entropy: how far the logits are from the tokens that came next, and its gradient.

use ndarray::{Array2, ArrayView2, Axis};

use super::softmax;

/// Cross-entropy of each row of logits against its target, averaged over the
/// `N` rows, as `F.cross_entropy(logits, targets)` (mean reduction):
///
/// ```text
/// loss = (1/N) Σₙ (log Σᵥ exp(zₙᵥ) - zₙ,targetₙ) = (1/N) Σₙ -log softmax(zₙ)[targetₙ]
/// ```
///
/// The log-sum-exp subtracts the row's maximum first, as [`softmax`] does, so
/// logits in the thousands do not overflow. For a batch `[B, T]`, flatten it:
/// `N = B·T` rows of logits, one target each.
///
/// Shapes: `logits: [N, vocab]`, `targets: [N]` (each `< vocab`) → scalar.
/// Panics if the lengths differ or a target is out of range.
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::reference::cross_entropy;
/// // two equal logits: probability ½ each, loss ln 2
/// assert!((cross_entropy(array![[3.0, 3.0]].view(), &[1]) - 2f32.ln()).abs() < 1e-6);
/// ```
pub fn cross_entropy(logits: ArrayView2<f32>, targets: &[u32]) -> f32 {
    assert_eq!(
        logits.nrows(),
        targets.len(),
        "cross_entropy: one target per row"
    );
    let total: f32 = logits
        .rows()
        .into_iter()
        .zip(targets)
        .map(|(z, &target)| {
            let m = z.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let log_sum_exp = m + z.mapv(|v| (v - m).exp()).sum().ln();
            log_sum_exp - z[target as usize]
        })
        .sum();
    total / targets.len() as f32
}

/// The backward of [`cross_entropy`]: `∂loss/∂zₙ = (softmax(zₙ) - onehot(targetₙ)) / N`.
///
/// The derivative of `log Σᵥ exp(zᵥ)` is the softmax, that of `-z_target` is
/// `-1` at the target: every wrong token is pushed down by its probability,
/// the right one pulled up by `1 - p`. The `1/N` is the mean's.
///
/// Shapes: `logits: [N, vocab]`, `targets: [N]` → `[N, vocab]`.
pub fn cross_entropy_backward(logits: ArrayView2<f32>, targets: &[u32]) -> Array2<f32> {
    assert_eq!(
        logits.nrows(),
        targets.len(),
        "cross_entropy: one target per row"
    );
    let n = targets.len() as f32;
    let mut dz = Array2::zeros(logits.raw_dim());
    for ((mut dz_row, z), &target) in dz.axis_iter_mut(Axis(0)).zip(logits.rows()).zip(targets) {
        dz_row.assign(&softmax(z));
        dz_row[target as usize] -= 1.0;
        dz_row /= n;
    }
    dz
}
