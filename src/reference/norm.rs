//! Mean, variance and layer normalisation, and the layer norm's backward.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use super::{LayerNorm, LayerNormGradients};

/// Mean `μ = (1/n) Σᵢ xᵢ`. Shapes: `[n]` → scalar.
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::reference::mean;
/// assert_eq!(mean(array![1.0, 2.0, 3.0, 6.0].view()), 3.0);
/// ```
pub fn mean(x: ArrayView1<f32>) -> f32 {
    x.sum() / x.len() as f32
}

/// Biased variance `σ² = (1/n) Σᵢ (xᵢ - μ)²` (divided by `n`, not `n - 1`:
/// `torch.var(x, unbiased=False)`, what `nn.LayerNorm` uses). Shapes: `[n]` → scalar.
///
/// Two passes, the mean first, then the squared deviations: the one-pass
/// `E[x²] - μ²` loses every digit when `|μ| ≫ σ`.
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::reference::variance;
/// // deviations from 3: [-2, -1, 0, 3], squares sum to 14, / 4
/// assert_eq!(variance(array![1.0, 2.0, 3.0, 6.0].view()), 3.5);
/// ```
pub fn variance(x: ArrayView1<f32>) -> f32 {
    let mu = mean(x);
    x.mapv(|v| (v - mu) * (v - mu)).sum() / x.len() as f32
}

/// Layer norm of each row: `y = (x - μ) / √(σ² + ε) · γ + β`, `μ` and `σ²` the
/// [`mean`] and [`variance`] of the row, `γ`, `β` = `ln.weight`, `ln.bias`,
/// `ε` = `ln.eps` (the config's `layer_norm_epsilon`, which the loader puts in
/// every [`LayerNorm`]).
///
/// Shapes: `x: [T, C]`, `γ, β: [C]` → `[T, C]`. Each position is normalised
/// on its own, over its `C` features; `ε` keeps a constant row finite.
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::{reference::layer_norm, weights::LayerNorm};
/// let ln = LayerNorm { weight: array![1.0, 1.0], bias: array![0.0, 0.5], eps: 0.0 };
/// // μ = 2, σ² = 1: [(1-2)/1, (3-2)/1] · 1 + [0, 0.5]
/// assert_eq!(layer_norm(array![[1.0, 3.0]].view(), &ln), array![[-1.0, 1.5]]);
/// ```
pub fn layer_norm(x: ArrayView2<f32>, ln: &LayerNorm) -> Array2<f32> {
    let mut y = x.to_owned();
    for mut row in y.axis_iter_mut(Axis(0)) {
        let (mu, var) = (mean(row.view()), variance(row.view()));
        row.mapv_inplace(|v| (v - mu) / (var + ln.eps).sqrt());
    }
    y * &ln.weight + &ln.bias // [T, C] · [C] + [C]
}

/// The backward of [`layer_norm`]: from `dy = ∂loss/∂y`, the gradients of the
/// input and of `γ`, `β`. With `x̂ = (x - μ)/σ`, `σ = √(σ² + ε)` (per row) and
/// `y = x̂·γ + β`:
///
/// ```text
/// ∂β = Σₜ dy            ∂γ = Σₜ dy ⊙ x̂           (summed over the T positions)
/// dx̂ = dy ⊙ γ
/// ∂x = (dx̂ - mean(dx̂) - x̂ · mean(dx̂ ⊙ x̂)) / σ   (per row, the means over C)
/// ```
///
/// The last line is the chain rule through `μ` and `σ`, which every entry of
/// the row feeds: shifting the row does not move `x̂` (hence `- mean(dx̂)`),
/// stretching it does not either (hence `- x̂·mean(dx̂ ⊙ x̂)`).
///
/// Shapes: `x, dy: [T, C]` → `∂x: [T, C]`, `∂γ, ∂β: [C]`.
pub fn layer_norm_backward(
    x: ArrayView2<f32>,
    ln: &LayerNorm,
    dy: ArrayView2<f32>,
) -> (Array2<f32>, LayerNormGradients) {
    let c = x.ncols();
    let mut dx = Array2::zeros(x.raw_dim());
    let mut d_ln = LayerNormGradients {
        weight: Array1::zeros(c),
        bias: Array1::zeros(c),
    };
    for ((x_row, dy_row), mut dx_row) in x.rows().into_iter().zip(dy.rows()).zip(dx.rows_mut()) {
        let (mu, var) = (mean(x_row), variance(x_row));
        let sigma = (var + ln.eps).sqrt();
        let x_hat = x_row.mapv(|v| (v - mu) / sigma); // [C]
        d_ln.weight += &(&dy_row * &x_hat);
        d_ln.bias += &dy_row;
        let dx_hat = &dy_row * &ln.weight; // [C]
        let (m1, m2) = (mean(dx_hat.view()), mean((&dx_hat * &x_hat).view()));
        dx_row.assign(&((&dx_hat - m1 - &x_hat * m2) / sigma));
    }
    (dx, d_ln)
}
