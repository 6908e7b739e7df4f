//! The weights' types: a matrix that may live where the checkpoint file lies,
//! a layer norm's parameters, a `Conv1D`'s.
//!
//! Both tiers read these same structs: the reference functions
//! ([`crate::reference`]) through [`Matrix::view`], the fast model's kernels
//! through the same view.
//!
//! GPT-2 small has 498 MB of `f32` weights. Copying them out of
//! `model.safetensors` into fresh arrays takes longer than a forward pass, and
//! for a while holds them twice. A [`Matrix`] is therefore either an ordinary
//! owned [`Array2`], or `rows × cols` little-endian `f32`s inside shared bytes
//! (a memory-mapped file) that are read in place. Either way the code sees
//! the same thing, an [`ArrayView2`] from [`Matrix::view`], so the code that
//! computes with a weight does not know or care where it is stored.

use std::fmt;
use std::sync::Arc;

use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2};

/// Immutable bytes shared by every tensor of one file: a memory map, or any
/// byte buffer. `as_ref` must return the same slice every time (a memory map
/// and a `Vec<u8>` do).
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// `f32` values stored, little-endian and aligned, in a range of [`SharedBytes`].
#[derive(Clone)]
pub struct SharedF32 {
    bytes: SharedBytes,
    start: usize,
    len: usize,
}

impl SharedF32 {
    /// The `f32`s of `bytes[start .. start + 4·len]`, used in place. `None`
    /// when they cannot be: the range is not inside the bytes, its start is
    /// not aligned to 4 bytes, or this machine is big-endian (the file is
    /// little-endian). The caller then copies and converts instead.
    pub fn new(bytes: SharedBytes, start: usize, len: usize) -> Option<Self> {
        let end = len.checked_mul(4)?.checked_add(start)?;
        let slice = (*bytes).as_ref().get(start..end)?;
        let usable =
            cfg!(target_endian = "little") && bytemuck::try_cast_slice::<u8, f32>(slice).is_ok();
        usable.then_some(SharedF32 { bytes, start, len })
    }

    /// The values.
    pub fn as_slice(&self) -> &[f32] {
        // Checked in `new`: in range and aligned (the bytes never move).
        bytemuck::cast_slice(&(*self.bytes).as_ref()[self.start..self.start + 4 * self.len])
    }
}

/// A read-only weight matrix `[rows, cols]`: owned, or `f32`s read in place
/// from a memory-mapped checkpoint ([`SharedF32`], row-major).
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::weights::Matrix;
/// let w = Matrix::from(array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
/// assert_eq!(w.dim(), (2, 3));
/// assert_eq!(w.view().row(1), array![4.0, 5.0, 6.0]);
/// assert!(!w.is_shared());
/// ```
#[derive(Clone)]
pub struct Matrix {
    data: Data,
    dim: (usize, usize),
}

#[derive(Clone)]
enum Data {
    Owned(Array2<f32>),
    Shared(SharedF32),
}

impl Matrix {
    /// A matrix of `dim` whose row-major values are `values`; `None` when the
    /// numbers of values and of elements differ.
    pub fn shared(values: SharedF32, dim: (usize, usize)) -> Option<Self> {
        (dim.0.checked_mul(dim.1)? == values.len).then_some(Matrix {
            data: Data::Shared(values),
            dim,
        })
    }

    /// The values as an array view, wherever they are stored.
    pub fn view(&self) -> ArrayView2<'_, f32> {
        match &self.data {
            Data::Owned(a) => a.view(),
            Data::Shared(s) => ArrayView2::from_shape(self.dim, s.as_slice())
                .expect("the length was checked against the shape"),
        }
    }

    /// `(rows, cols)`.
    pub fn dim(&self) -> (usize, usize) {
        self.dim
    }

    /// Rows.
    pub fn nrows(&self) -> usize {
        self.dim.0
    }

    /// Columns.
    pub fn ncols(&self) -> usize {
        self.dim.1
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.dim.0 * self.dim.1
    }

    /// Whether the matrix has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the values are read in place from shared bytes (a memory map)
    /// rather than owned.
    pub fn is_shared(&self) -> bool {
        matches!(self.data, Data::Shared(_))
    }

    /// An owned copy of the values.
    pub fn to_owned(&self) -> Array2<f32> {
        self.view().to_owned()
    }

    /// The values, mutable (what an optimiser step writes to). Copy on
    /// write: a matrix read in place from shared bytes (a memory map, which
    /// is read-only) is first copied into an owned array, once; an owned
    /// matrix is handed out as it is.
    ///
    /// ```
    /// use ndarray::array;
    /// use gpt2_ndarray::weights::Matrix;
    /// let mut w = Matrix::from(array![[1.0, 2.0]]);
    /// w.view_mut()[[0, 1]] = 5.0;
    /// assert_eq!(w.view(), array![[1.0, 5.0]]);
    /// ```
    pub fn view_mut(&mut self) -> ArrayViewMut2<'_, f32> {
        if !matches!(self.data, Data::Owned(_)) {
            self.data = Data::Owned(self.to_owned());
        }
        match &mut self.data {
            Data::Owned(a) => a.view_mut(),
            _ => unreachable!("made owned above"),
        }
    }
}

impl From<Array2<f32>> for Matrix {
    fn from(a: Array2<f32>) -> Self {
        Matrix {
            dim: a.dim(),
            data: Data::Owned(a),
        }
    }
}

impl PartialEq for Matrix {
    fn eq(&self, other: &Self) -> bool {
        self.view() == other.view()
    }
}

impl fmt::Debug for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let storage = if self.is_shared() { "shared" } else { "owned" };
        write!(f, "Matrix({storage}) {:?}", self.view())
    }
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

/// The parameters of a GPT-2 `Conv1D` module (despite its name, a linear
/// layer `y = x · W + b`; transformers stores `W` as `[in, out]`, the
/// transpose of `nn.Linear`'s).
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
