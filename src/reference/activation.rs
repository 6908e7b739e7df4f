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
//! [`activation`] applies it. Each has its derivative beside it
//! ([`gelu_new_derivative`], ...), which [`activation_backward`] applies.

use ndarray::{Array2, ArrayView2, Zip};

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

/// `gelu_new'(x) = ½(1 + t) + ½x(1 - t²)·√(2/π)(1 + 3·0.044715x²)`,
/// `t = tanh(√(2/π)(x + 0.044715x³))`: the product rule on `½x·(1 + t)`, and
/// `tanh' = 1 - tanh²`.
pub fn gelu_new_derivative(x: f32) -> f32 {
    let t = (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x)
}

/// `gelu_fast'(x)`: [`gelu_new_derivative`]'s formula on [`gelu_fast`]'s
/// factoring, `t = tanh(0.7978845608·x(1 + 0.044715x²))`.
pub fn gelu_fast_derivative(x: f32) -> f32 {
    let t = (x * SQRT_2_OVER_PI * (1.0 + 0.044715 * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x)
}

/// `gelu'(x) = Φ(x) + x·φ(x)`, `φ(x) = e^(-x²/2)/√(2π)` the standard normal
/// density (the derivative of `Φ`).
pub fn gelu_derivative(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + libm::erff(x / std::f32::consts::SQRT_2));
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f32::consts::PI).sqrt();
    cdf + x * pdf
}

/// `quick_gelu'(x) = s + 1.702·x·s(1 - s)`, `s = σ(1.702x)` (`σ' = σ(1 - σ)`).
pub fn quick_gelu_derivative(x: f32) -> f32 {
    let s = sigmoid(1.702 * x);
    s + 1.702 * x * s * (1.0 - s)
}

/// `relu'(x)`: 1 where `x > 0`, else 0 (0 at `x = 0` too, as PyTorch takes it).
pub fn relu_derivative(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else {
        0.0
    }
}

/// `silu'(x) = s(1 + x(1 - s))`, `s = σ(x)`.
pub fn silu_derivative(x: f32) -> f32 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

/// The backward of [`activation`], elementwise: `∂x = dy ⊙ f'(x)`, `f'` the
/// derivative of `act` (the `*_derivative` functions above).
/// Shapes: `x, dy: [T, n]` → `[T, n]`; `x` is the activation's input.
pub fn activation_backward(
    act: Activation,
    x: ArrayView2<f32>,
    dy: ArrayView2<f32>,
) -> Array2<f32> {
    let derivative: fn(f32) -> f32 = match act {
        Activation::GeluNew => gelu_new_derivative,
        Activation::GeluFast => gelu_fast_derivative,
        Activation::Gelu => gelu_derivative,
        Activation::QuickGelu => quick_gelu_derivative,
        Activation::Relu => relu_derivative,
        Activation::Silu => silu_derivative,
    };
    let mut dx = dy.to_owned();
    Zip::from(&mut dx)
        .and(&x)
        .for_each(|d, &x| *d *= derivative(x));
    dx
}
