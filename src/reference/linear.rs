//! Dot product, matrix product and GPT-2's linear layer (`Conv1D`), and their backward.

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};

use super::{Conv1D, Conv1DGradients};

/// Dot product `a · b = Σᵢ aᵢ bᵢ`. Shapes: `[n]`, `[n]` → scalar.
///
/// The one operation every layer below is made of: a matrix product is a
/// dot product per output entry, a linear layer a matrix product plus a bias.
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::reference::dot;
/// // torch.dot(torch.tensor([1., 2., 3.]), torch.tensor([4., 5., 6.])) = 32.
/// assert_eq!(dot(array![1.0, 2.0, 3.0].view(), array![4.0, 5.0, 6.0].view()), 32.0);
/// ```
pub fn dot(a: ArrayView1<f32>, b: ArrayView1<f32>) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    a.iter().zip(b.iter()).map(|(x, y)| x * y).sum()
}

/// Matrix product `C = A · B`, `Cᵢⱼ = Σₖ Aᵢₖ Bₖⱼ = dot(row i of A, column j of B)`.
/// Shapes: `[m, k] · [k, n]` → `[m, n]`.
///
/// Computed by `ndarray`'s `.dot`, the same sum as [`dot`] per entry in a
/// cache-friendly order (a loop of [`dot`]s gives the same numbers up to
/// rounding, and is what `tests/reference.rs` checks it against).
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::reference::matmul;
/// let (a, b) = (array![[1.0, 2.0], [3.0, 4.0]], array![[5.0, 6.0], [7.0, 8.0]]);
/// assert_eq!(matmul(a.view(), b.view()), array![[19.0, 22.0], [43.0, 50.0]]);
/// ```
pub fn matmul(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
    assert_eq!(a.ncols(), b.nrows(), "matmul: inner dimensions differ");
    a.dot(&b)
}

/// GPT-2's linear layer, `y = x · W + b`, with the weights of a `Conv1D`
/// module (`attn.c_attn`, `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`).
///
/// Shapes: `x: [T, in]`, `W: [in, out]`, `b: [out]` → `[T, out]`. `Conv1D`
/// stores `W` as `[in, out]`, the transpose of `nn.Linear`'s `[out, in]`, so
/// no transpose is needed here; despite its name it is not a convolution.
/// A weight stored in half precision is upcast to `f32` first (`to_f32`).
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::{reference::conv1d, weights::Conv1D};
/// let layer = Conv1D { weight: array![[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]].into(), bias: array![0.0, 0.5, 1.0] };
/// // transformers.pytorch_utils.Conv1D(nf=3, nx=2) with that weight and bias
/// let y = conv1d(array![[1.0, 2.0], [0.0, -1.0]].view(), &layer);
/// assert_eq!(y, array![[5.0, 2.5, 0.0], [-2.0, -0.5, 1.0]]);
/// ```
pub fn conv1d(x: ArrayView2<f32>, layer: &Conv1D) -> Array2<f32> {
    matmul(x, layer.weight.to_f32().view()) + &layer.bias // [T, in] · [in, out] + [out] -> [T, out]
}

/// The backward of [`matmul`]: for `C = A·B` and `dC = ∂loss/∂C`,
/// `∂A = dC·Bᵀ` and `∂B = Aᵀ·dC` (`Cᵢⱼ = Σₖ Aᵢₖ Bₖⱼ`, so `Aᵢₖ` reaches every
/// `Cᵢⱼ` with weight `Bₖⱼ`, and `Bₖⱼ` every `Cᵢⱼ` with weight `Aᵢₖ`).
///
/// Shapes: `A: [m, k]`, `B: [k, n]`, `dC: [m, n]` → `∂A: [m, k]`, `∂B: [k, n]`.
pub fn matmul_backward(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    dc: ArrayView2<f32>,
) -> (Array2<f32>, Array2<f32>) {
    (matmul(dc, b.t()), matmul(a.t(), dc)) // [m, n]·[n, k], [k, m]·[m, n]
}

/// The backward of [`conv1d`], `y = x·W + b`: [`matmul_backward`] gives
/// `∂x = dy·Wᵀ` and `∂W = xᵀ·dy`, and the bias, added to every row, collects
/// `∂b = Σₜ dy`.
///
/// Shapes: `x: [T, in]`, `dy: [T, out]` → `∂x: [T, in]`, `∂W: [in, out]`
/// (the layout `Conv1D` stores), `∂b: [out]`. A weight stored in half
/// precision is upcast to `f32` first, as in [`conv1d`].
pub fn conv1d_backward(
    x: ArrayView2<f32>,
    layer: &Conv1D,
    dy: ArrayView2<f32>,
) -> (Array2<f32>, Conv1DGradients) {
    let (dx, weight) = matmul_backward(x, layer.weight.to_f32().view(), dy);
    let bias = dy.sum_axis(Axis(0)); // [T, out] -> [out]
    (dx, Conv1DGradients { weight, bias })
}
