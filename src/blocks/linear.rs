//! Dot product, matrix product and the linear layer (`Conv1D`) of GPT-2.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use rayon::prelude::*;

use super::gemm::{matmul_into, Output};
use super::matrix::Matrix;

/// Dot product of two vectors: `a · b = Σᵢ aᵢ bᵢ`.
///
/// Shapes: `a: [n]`, `b: [n]` → scalar. Panics if the lengths differ, as
/// `ndarray`'s `dot` does (a programming error, not bad input).
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::blocks::dot;
/// // torch.dot(torch.tensor([1., 2., 3.]), torch.tensor([4., 5., 6.])) = 32.
/// assert_eq!(dot(array![1.0, 2.0, 3.0].view(), array![4.0, 5.0, 6.0].view()), 32.0);
/// ```
pub fn dot(a: ArrayView1<f32>, b: ArrayView1<f32>) -> f32 {
    a.dot(&b)
}

/// Matrix product `C = A · B`, `Cᵢⱼ = Σₖ Aᵢₖ Bₖⱼ`.
///
/// Shapes: `a: [m, k]`, `b: [k, n]` → `[m, n]`. Any strides, so a transposed
/// view (`w.t()`) costs no copy. With a few rows (decoding) it streams `b` once
/// through a matrix–vector kernel; with up to 32 (a short prompt) a
/// register-tiled kernel reads a row-major `b` in place; with more it runs the
/// `gemm` crate's packed AVX-512 or AVX2/FMA GEMM on the current thread pool — see
/// [`super::gemm`]. The result never depends on the number of threads.
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::blocks::matmul;
/// let a = array![[1.0, 2.0], [3.0, 4.0]];
/// let b = array![[5.0, 6.0], [7.0, 8.0]];
/// // torch.tensor([[1., 2.], [3., 4.]]) @ torch.tensor([[5., 6.], [7., 8.]]) = [[19., 22.], [43., 50.]]
/// assert_eq!(matmul(a.view(), b.view()), array![[19.0, 22.0], [43.0, 50.0]]);
/// ```
pub fn matmul(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
    let mut c = Array2::zeros((a.nrows(), b.ncols()));
    matmul_into(a, b, c.view_mut(), Output::Overwrite);
    c
}

/// The plain definition of [`matmul`], one dot product per output, kept as
/// the reference the fast kernels are tested against.
pub fn matmul_naive(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
    assert_eq!(
        a.ncols(),
        b.nrows(),
        "matmul_naive: inner dimensions differ"
    );
    Array2::from_shape_fn((a.nrows(), b.ncols()), |(i, j)| a.row(i).dot(&b.column(j)))
}

/// Linear layer in the `Conv1D` layout that GPT-2 checkpoints use:
/// `y = x · W + b`.
///
/// Shapes: `x: [T, in]`, `w: [in, out]` (the transpose of `nn.Linear`'s
/// `[out, in]`), `b: [out]` → `[T, out]`.
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::blocks::linear;
/// let x = array![[1.0, 2.0]];                     // [T=1, in=2]
/// let w = array![[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]; // [in=2, out=3]
/// let b = array![0.5, 0.5, 0.5];
/// // torch.tensor([[1., 2.]]) @ torch.tensor([[1., 0., 1.], [0., 1., 1.]]) + 0.5 = [[1.5, 2.5, 3.5]]
/// assert_eq!(linear(x.view(), w.view(), b.view()), array![[1.5, 2.5, 3.5]]);
/// ```
pub fn linear(x: ArrayView2<f32>, w: ArrayView2<f32>, b: ArrayView1<f32>) -> Array2<f32> {
    // Start from b in every row, then add x·W into it: the product's kernels
    // add into their output, so the bias costs no extra pass over y.
    let mut y = Array2::zeros((x.nrows(), w.ncols()));
    y.axis_iter_mut(Axis(0))
        .into_par_iter()
        .with_min_len(64)
        .for_each(|mut row| row.assign(&b));
    matmul_into(x, w, y.view_mut(), Output::Accumulate); // [T, in] · [in, out] -> [T, out]
    y
}

/// The parameters of a GPT-2 `Conv1D` module (despite its name, a linear layer).
#[derive(Clone, Debug)]
pub struct Conv1D {
    /// `[in, out]` (`nx`, `nf` in transformers' naming); owned, or read in
    /// place from a memory-mapped checkpoint.
    pub weight: Matrix,
    /// `[out]`.
    pub bias: Array1<f32>,
}

impl Conv1D {
    /// `nx`: the input width.
    pub fn n_in(&self) -> usize {
        self.weight.nrows()
    }
    /// `nf`: the output width.
    pub fn n_out(&self) -> usize {
        self.weight.ncols()
    }
}

/// Apply a [`Conv1D`]: `y = x · W + b`, `x: [T, in]` → `[T, out]`, the
/// [`linear`] layer with the weights of a checkpoint's `h.{i}.attn.c_attn`,
/// `h.{i}.mlp.c_fc`, ...
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::blocks::{conv1d, Conv1D};
/// let layer = Conv1D {
///     weight: array![[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]].into(), // [in=2, out=3]
///     bias: array![0.0, 0.5, 1.0],
/// };
/// assert_eq!((layer.n_in(), layer.n_out()), (2, 3)); // transformers: Conv1D(nf=3, nx=2)
/// // c = transformers.pytorch_utils.Conv1D(nf=3, nx=2) with that weight and bias;
/// // c(torch.tensor([[1., 2.], [0., -1.]])) = [[5.0, 2.5, 0.0], [-2.0, -0.5, 1.0]]
/// let y = conv1d(array![[1.0, 2.0], [0.0, -1.0]].view(), &layer);
/// assert_eq!(y, array![[5.0, 2.5, 0.0], [-2.0, -0.5, 1.0]]);
/// ```
pub fn conv1d(x: ArrayView2<f32>, layer: &Conv1D) -> Array2<f32> {
    linear(x, layer.weight.view(), layer.bias.view())
}
