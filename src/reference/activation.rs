//! The MLP's non-linearity: every `activation_function` a GPT-2 config may name.
//!
//! | config name | function | formula |
//! |---|---|---|
//! | `gelu_new`, `gelu_pytorch_tanh` (GPT-2's own) | [`gelu_new`] | `½x(1 + tanh(√(2/π)(x + 0.044715x³)))` |
//! | `gelu_fast` | [`gelu_fast`] | `½x(1 + tanh(0.7978845608·x(1 + 0.044715x²)))` |
//! | `gelu` | [`gelu`] | `½x(1 + erf(x/√2))` |
//! | `quick_gelu` | [`quick_gelu`] | `x·σ(1.702x)` |
//! | `relu` | [`relu`] | `max(x, 0)` |
//! | `silu`, `swish` | [`silu`] | `x·σ(x)` |
//!
//! `σ` is the [`sigmoid`]. The config reads the name into an [`Activation`];
//! [`activation`] applies it.

use ndarray::{Array2, ArrayView2};

use super::Activation;

/// `√(2/π)`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// GELU, tanh approximation (`gelu_new`): `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`.
///
/// ```
/// use gpt2_ndarray::reference::gelu_new;
/// // ACT2FN["gelu_new"](torch.tensor([1., -1.])) = [0.8411920, -0.1588080]
/// assert!((gelu_new(1.0) - 0.841_192).abs() < 1e-6 && (gelu_new(-1.0) + 0.158_808).abs() < 1e-6);
/// ```
pub fn gelu_new(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

/// `gelu_fast`: the same approximation as [`gelu_new`], factored as
/// transformers' `FastGELUActivation` writes it:
/// `½x(1 + tanh(0.7978845608·x·(1 + 0.044715x²)))`.
pub fn gelu_fast(x: f32) -> f32 {
    0.5 * x * (1.0 + (x * SQRT_2_OVER_PI * (1.0 + 0.044715 * x * x)).tanh())
}

/// Exact GELU (`gelu`): `x·Φ(x) = ½x(1 + erf(x/√2))`, `Φ` the standard normal CDF.
///
/// ```
/// use gpt2_ndarray::reference::gelu;
/// // ACT2FN["gelu"](torch.tensor([1.])) = 0.8413447: close to gelu_new's 0.8411920, not equal
/// assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
/// ```
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x / std::f32::consts::SQRT_2))
}

/// The logistic sigmoid `σ(x) = 1 / (1 + e⁻ˣ)`.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `quick_gelu`: `x·σ(1.702x)`.
pub fn quick_gelu(x: f32) -> f32 {
    x * sigmoid(1.702 * x)
}

/// ReLU: `max(x, 0)`.
pub fn relu(x: f32) -> f32 {
    x.max(0.0)
}

/// SiLU, also called swish: `x·σ(x)`.
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// The activation `act` (the config's `activation_function`) of every entry:
/// `[T, n]` → `[T, n]`.
pub fn activation(act: Activation, x: ArrayView2<f32>) -> Array2<f32> {
    let f: fn(f32) -> f32 = match act {
        Activation::GeluNew => gelu_new,
        Activation::GeluFast => gelu_fast,
        Activation::Gelu => gelu,
        Activation::QuickGelu => quick_gelu,
        Activation::Relu => relu,
        Activation::Silu => silu,
    };
    x.mapv(f)
}
