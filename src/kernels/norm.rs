//! The fast layer norm: the twin of [`reference::layer_norm`] (and of its
//! [`reference::mean`], [`reference::variance`]).

use ndarray::{Array2, ArrayView1, ArrayView2, Axis, Zip};
use rayon::prelude::*;

use super::fastmath::{sum_lanes, sum_squared_deviations};
#[cfg(doc)]
use crate::reference;
use crate::weights::LayerNorm;

/// [`reference::mean`], fast: `μ = (1/n) Σᵢ xᵢ` summed over SIMD lanes.
/// Shapes: `[n]` → scalar (NaN for `n = 0`).
pub fn mean(x: ArrayView1<f32>) -> f32 {
    let x = x.as_standard_layout();
    sum_lanes(x.as_slice().expect("standard layout")) / x.len() as f32
}

/// [`reference::variance`], fast: the biased `σ² = (1/n) Σᵢ (xᵢ - μ)²`.
///
/// Shapes: `[n]` → scalar. Computed in two passes (mean first, then the
/// squared deviations), which stays accurate when `|μ| ≫ σ`.
pub fn variance(x: ArrayView1<f32>) -> f32 {
    let mu = mean(x);
    let x = x.as_standard_layout();
    sum_squared_deviations(x.as_slice().expect("standard layout"), mu) / x.len() as f32
}

/// [`reference::layer_norm`], fast (rows in parallel): `yᵢ = (xᵢ - μ) / √(σ² + ε) · γᵢ + βᵢ`, with `μ`, `σ²`
/// the [`mean`] and biased [`variance`] of that row.
///
/// Shapes: `x: [T, C]`, `γ, β: [C]` → `[T, C]`. `ε` keeps a constant row (σ² = 0)
/// finite: it comes out as `β`.
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
