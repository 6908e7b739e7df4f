//! The fast activations: the twins of [`reference::activation`] and of its
//! scalar formulas ([`reference::gelu_new`], ...), built on the vectorisable
//! [`exp`] so that a row of `[T, n_inner]` is one loop the compiler vectorises.

use ndarray::{ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::fastmath::{exp, map_inplace, sigmoid};
use crate::config::Activation;
#[cfg(doc)]
use crate::reference;

/// `√(2/π)`, the constant of the tanh approximation of GELU.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// GELU, tanh approximation (`gelu_new`, GPT-2's own activation, and
/// `gelu_pytorch_tanh`): `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
///
/// Computed as `x·σ(2u)`, `u = √(2/π)·(x + 0.044715·x³)`, which is the same
/// function (`1 + tanh(u) = 2σ(2u)`) and needs one [`exp`]
/// instead of a `tanh`: it vectorises, and it does not lose digits where
/// `1 + tanh(u)` nearly cancels (large negative `x`).
#[inline(always)]
pub fn gelu_new(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    x * sigmoid(2.0 * u)
}

/// Exact GELU (`gelu`): `x·Φ(x) = 0.5·x·(1 + erf(x/√2))`, Φ the standard normal CDF.
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `gelu_fast`: the tanh approximation written as transformers' `FastGELUActivation`
/// writes it, `0.5·x·(1 + tanh(x·0.7978845608·(1 + 0.044715·x²)))`, computed as
/// `x·σ(2u)` like [`gelu_new`].
#[inline(always)]
pub fn gelu_fast(x: f32) -> f32 {
    let u = x * SQRT_2_OVER_PI * (1.0 + 0.044715 * x * x);
    x * sigmoid(2.0 * u)
}

/// `quick_gelu`: `x·σ(1.702·x)`.
#[inline(always)]
pub fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + exp(-1.702 * x))
}

/// ReLU: `max(x, 0)`.
#[inline(always)]
pub fn relu(x: f32) -> f32 {
    x.max(0.0)
}

/// SiLU / swish: `x·σ(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

impl Activation {
    /// [`reference::activation`], fast and in place (the MLP's hidden layer
    /// `[T, n_inner]`). Rows run
    /// in parallel, and the activation is chosen once, outside the loop over
    /// a row, so that the loop is one inlined function the compiler vectorises.
    #[doc(hidden)] // a kernel: reached by the model, and by tests through `kernels`
    pub fn apply_inplace(self, mut x: ArrayViewMut2<f32>) {
        fn rows(mut x: ArrayViewMut2<f32>, f: impl Fn(f32) -> f32 + Sync) {
            x.axis_iter_mut(Axis(0))
                .into_par_iter()
                .with_min_len(4)
                .for_each(|mut row| match row.as_slice_mut() {
                    Some(row) => map_inplace(row, &f),
                    None => row.iter_mut().for_each(|v| *v = f(*v)),
                });
        }
        match self {
            Activation::GeluNew => rows(x.view_mut(), gelu_new),
            Activation::GeluFast => rows(x.view_mut(), gelu_fast),
            Activation::Gelu => rows(x.view_mut(), gelu),
            Activation::QuickGelu => rows(x.view_mut(), quick_gelu),
            Activation::Relu => rows(x.view_mut(), relu),
            Activation::Silu => rows(x.view_mut(), silu),
        }
    }
}
