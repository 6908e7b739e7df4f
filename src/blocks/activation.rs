//! The MLP's non-linearity: GPT-2's `gelu_new` and the alternatives a config may name.

use anyhow::{bail, Result};
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::fastmath::{exp, map_inplace, sigmoid};

/// `√(2/π)`, the constant of the tanh approximation of GELU.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// GELU, tanh approximation (`gelu_new`, GPT-2's own activation, and
/// `gelu_pytorch_tanh`): `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
///
/// Computed as `x·σ(2u)`, `u = √(2/π)·(x + 0.044715·x³)`, which is the same
/// function (`1 + tanh(u) = 2σ(2u)`) and needs one [`exp`]
/// instead of a `tanh`: it vectorises, and it does not lose digits where
/// `1 + tanh(u)` nearly cancels (large negative `x`).
///
/// ```
/// use gpt2_ndarray::blocks::gelu_new;
/// assert_eq!(gelu_new(0.0), 0.0);
/// // ACT2FN["gelu_new"](torch.tensor([1., -1., 0.5])) = [0.8411920, -0.1588080, 0.3457140]
/// assert!((gelu_new(1.0) - 0.841_192).abs() < 1e-6);
/// assert!((gelu_new(-1.0) + 0.158_808).abs() < 1e-6);
/// assert!((gelu_new(0.5) - 0.345_714).abs() < 1e-6);
/// ```
#[inline(always)]
pub fn gelu_new(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    x * sigmoid(2.0 * u)
}

/// Exact GELU (`gelu`): `x·Φ(x) = 0.5·x·(1 + erf(x/√2))`, Φ the standard normal CDF.
///
/// ```
/// use gpt2_ndarray::blocks::gelu;
/// // ACT2FN["gelu"](torch.tensor([1., -1.])) = [0.8413447, -0.1586553]: close to gelu_new, not equal
/// assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
/// assert!((gelu(-1.0) + 0.158_655_3).abs() < 1e-6);
/// ```
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `gelu_fast`: the tanh approximation written as transformers' `FastGELUActivation`
/// writes it, `0.5·x·(1 + tanh(x·0.7978845608·(1 + 0.044715·x²)))`, computed as
/// `x·σ(2u)` like [`gelu_new`].
///
/// ```
/// use gpt2_ndarray::blocks::{gelu_fast, gelu_new};
/// // ACT2FN["gelu_fast"](torch.tensor([1., -1.])) = [0.8411920, -0.1588080], gelu_new's values
/// assert!((gelu_fast(1.0) - 0.841_192).abs() < 1e-6);
/// assert!((gelu_fast(-1.0) - gelu_new(-1.0)).abs() < 1e-6);
/// ```
#[inline(always)]
pub fn gelu_fast(x: f32) -> f32 {
    let u = x * SQRT_2_OVER_PI * (1.0 + 0.044715 * x * x);
    x * sigmoid(2.0 * u)
}

/// `quick_gelu`: `x·σ(1.702·x)`.
///
/// ```
/// use gpt2_ndarray::blocks::quick_gelu;
/// // ACT2FN["quick_gelu"](torch.tensor([1., -1.])) = [0.8457958, -0.1542042]
/// assert!((quick_gelu(1.0) - 0.845_795_8).abs() < 1e-6);
/// assert!((quick_gelu(-1.0) + 0.154_204_2).abs() < 1e-6);
/// ```
#[inline(always)]
pub fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + exp(-1.702 * x))
}

/// ReLU: `max(x, 0)`.
///
/// ```
/// use gpt2_ndarray::blocks::relu;
/// // torch.relu(torch.tensor([-2., 3.])) = [0., 3.]
/// assert_eq!((relu(-2.0), relu(3.0)), (0.0, 3.0));
/// ```
#[inline(always)]
pub fn relu(x: f32) -> f32 {
    x.max(0.0)
}

/// SiLU / swish: `x·σ(x)`.
///
/// ```
/// use gpt2_ndarray::blocks::silu;
/// // torch.nn.functional.silu(torch.tensor([1., -1.])) = [0.7310586, -0.2689414]
/// assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
/// assert!((silu(-1.0) + 0.268_941_4).abs() < 1e-6);
/// ```
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// The activation a config's `activation_function` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new` and `gelu_pytorch_tanh`: [`gelu_new`].
    GeluNew,
    /// `gelu_fast`: [`gelu_fast`].
    GeluFast,
    /// `gelu`: [`gelu`] (erf).
    Gelu,
    /// `quick_gelu`: [`quick_gelu`].
    QuickGelu,
    /// `relu`: [`relu`].
    Relu,
    /// `silu` / `swish`: [`silu`].
    Silu,
}

impl Activation {
    /// The activation for a transformers `activation_function` name.
    /// An unknown name is an error (never a silent default).
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluNew,
            "gelu_fast" => Activation::GeluFast,
            "gelu" => Activation::Gelu,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => bail!(
                "unsupported activation_function {other:?} (supported: gelu_new, \
                 gelu_pytorch_tanh, gelu_fast, gelu, quick_gelu, relu, silu, swish)"
            ),
        })
    }

    /// The activation of one number.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::GeluNew => gelu_new(x),
            Activation::GeluFast => gelu_fast(x),
            Activation::Gelu => gelu(x),
            Activation::QuickGelu => quick_gelu(x),
            Activation::Relu => relu(x),
            Activation::Silu => silu(x),
        }
    }

    /// Elementwise on a matrix: `[T, n]` → `[T, n]`.
    pub fn forward(self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut y = x.to_owned();
        self.apply_inplace(y.view_mut());
        y
    }

    /// Elementwise, in place (the MLP's hidden layer `[T, n_inner]`). Rows run
    /// in parallel, and the activation is chosen once, outside the loop over
    /// a row, so that the loop is one inlined function the compiler vectorises.
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
