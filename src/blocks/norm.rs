//! Mean, variance and layer normalisation.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, Zip};
use rayon::prelude::*;

use super::fastmath::{sum_lanes, sum_squared_deviations};

/// Mean of a vector: `μ = (1/n) Σᵢ xᵢ`. Shapes: `[n]` → scalar (NaN for `n = 0`).
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::blocks::mean;
/// // torch.mean(torch.tensor([1., 2., 3., 6.])) = 3.
/// assert_eq!(mean(array![1.0, 2.0, 3.0, 6.0].view()), 3.0);
/// ```
pub fn mean(x: ArrayView1<f32>) -> f32 {
    let x = x.as_standard_layout();
    sum_lanes(x.as_slice().expect("standard layout")) / x.len() as f32
}

/// Biased variance: `σ² = (1/n) Σᵢ (xᵢ - μ)²`, as `torch.var(x, unbiased=False)`
/// and as `nn.LayerNorm` uses it (divide by `n`, not `n - 1`).
///
/// Shapes: `[n]` → scalar. Computed in two passes (mean first, then the
/// squared deviations), which stays accurate when `|μ| ≫ σ`.
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::blocks::variance;
/// // mean 3, deviations [-2, -1, 0, 3], squares sum to 14, / 4
/// // torch.var(torch.tensor([1., 2., 3., 6.]), unbiased=False) = 3.5
/// assert_eq!(variance(array![1.0, 2.0, 3.0, 6.0].view()), 3.5);
/// ```
pub fn variance(x: ArrayView1<f32>) -> f32 {
    let mu = mean(x);
    let x = x.as_standard_layout();
    sum_squared_deviations(x.as_slice().expect("standard layout"), mu) / x.len() as f32
}

/// The parameters of `nn.LayerNorm(n)`.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// Gain `γ`, `[n]`.
    pub weight: Array1<f32>,
    /// Bias `β`, `[n]`.
    pub bias: Array1<f32>,
    /// `ε`, added to the variance before the square root (`layer_norm_epsilon`).
    pub eps: f32,
}

/// Layer norm of each row: `yᵢ = (xᵢ - μ) / √(σ² + ε) · γᵢ + βᵢ`, with `μ`, `σ²`
/// the [`mean`] and biased [`variance`] of that row.
///
/// Shapes: `x: [T, C]`, `γ, β: [C]` → `[T, C]`. `ε` keeps a constant row (σ² = 0)
/// finite: it comes out as `β`.
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::blocks::{layer_norm, LayerNorm};
/// let ln = LayerNorm { weight: array![1.0, 1.0], bias: array![0.0, 0.0], eps: 0.0 };
/// // μ = 2, σ² = 1: [(1-2)/1, (3-2)/1]
/// // F.layer_norm(torch.tensor([[1., 3.]]), (2,), eps=0.0) = [[-1., 1.]]
/// assert_eq!(layer_norm(array![[1.0, 3.0]].view(), &ln), array![[-1.0, 1.0]]);
///
/// // With a gain, a bias and GPT-2's ε: μ = 7/3, σ² = 14/9, then · γ + β.
/// // F.layer_norm(torch.tensor([[1., 2., 4.]]), (3,), weight=torch.tensor([1., 2., 0.5]),
/// //              bias=torch.tensor([0., 0., 1.]), eps=1e-5) = [[-1.0690414, -0.5345206, 1.6681509]]
/// let ln = LayerNorm { weight: array![1.0, 2.0, 0.5], bias: array![0.0, 0.0, 1.0], eps: 1e-5 };
/// let y = layer_norm(array![[1.0, 2.0, 4.0]].view(), &ln);
/// for (got, want) in y.iter().zip([-1.069_041_4, -0.534_520_6, 1.668_150_9]) {
///     assert!((got - want).abs() < 1e-6);
/// }
/// ```
pub fn layer_norm(x: ArrayView2<f32>, ln: &LayerNorm) -> Array2<f32> {
    let mut y = Array2::zeros(x.raw_dim());
    y.axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(x.axis_iter(Axis(0)))
        .with_min_len(8)
        .for_each(|(mut y_row, x_row)| {
            let mu = mean(x_row);
            let var = variance(x_row);
            let inv_std = 1.0 / (var + ln.eps).sqrt();
            Zip::from(&mut y_row)
                .and(x_row)
                .and(&ln.weight)
                .and(&ln.bias)
                .for_each(|y, &x, &g, &b| *y = (x - mu) * inv_std * g + b);
        });
    y
}
