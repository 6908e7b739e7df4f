//! The weights' types: a matrix that may live where the checkpoint file lies,
//! in the precision the file stores; a layer norm's parameters, a `Conv1D`'s.
//!
//! GPT-2 small has 498 MB of `f32` weights. Copying them out of
//! `model.safetensors` into fresh arrays takes longer than a forward pass, and
//! for a while holds them twice. A [`Matrix`] is therefore either an ordinary
//! owned [`Array2`], or `rows × cols` little-endian values inside shared bytes
//! (a memory-mapped file) that are read in place.
//!
//! A matrix also keeps the **dtype** it was stored in: `f32`, or one of the
//! two 16-bit formats, `f16` (IEEE half precision) and `bf16` (bfloat16).
//! Decoding reads every weight once per token, so its speed is the bytes read
//! per second: half-precision weights kept as stored halve both the memory
//! and the bytes read. The arithmetic stays `f32`: the fast model's kernels
//! widen each half to `f32` as they load it ([`Matrix::stored`]), and the
//! reference tier upcasts once ([`Matrix::to_f32`]).
//!
//! Which accessor to use:
//!
//! | accessor | `f32` matrix | `f16` / `bf16` matrix |
//! |---|---|---|
//! | [`Matrix::view`] | the values, in place | **panics**: say what you want instead |
//! | [`Matrix::as_f32`] | `Some(view)` | `None` |
//! | [`Matrix::to_f32`] | a view (no copy) | an upcast copy |
//! | [`Matrix::to_owned`] | a copy | an upcast copy |
//! | [`Matrix::stored`] | the values as stored, for the kernels | the same |

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};
use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2, CowArray, Ix1, Ix2};

use crate::checkpoint::Dtype;

/// Immutable bytes shared by every tensor of one file: a memory map, or any
/// byte buffer. `as_ref` must return the same slice every time (a memory map
/// and a `Vec<u8>` do).
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Values of type `T` (`f32`, or a half's 16 bits as `u16`) stored,
/// little-endian and aligned, in a range of [`SharedBytes`].
pub struct Shared<T> {
    bytes: SharedBytes,
    start: usize,
    len: usize,
    /// Whether `bytes` is a vector of these values alone ([`Shared::from_vec`]).
    owned: bool,
    element: PhantomData<T>,
}

/// `f32` values read in place from shared bytes.
pub type SharedF32 = Shared<f32>;

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            bytes: Arc::clone(&self.bytes),
            start: self.start,
            len: self.len,
            owned: self.owned,
            element: PhantomData,
        }
    }
}

/// A vector of plain numbers seen as bytes, so that owned values can be
/// [`SharedBytes`] too.
struct PodVec<T>(Vec<T>);

impl<T: bytemuck::Pod> AsRef<[u8]> for PodVec<T> {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

impl<T: bytemuck::Pod + Send + Sync> Shared<T> {
    /// The values of `bytes[start .. start + size_of::<T>()·len]`, used in
    /// place. `None` when they cannot be: the range is not inside the bytes,
    /// its start is not aligned for `T`, or this machine is big-endian (the
    /// file is little-endian). The caller then copies and converts instead.
    pub fn new(bytes: SharedBytes, start: usize, len: usize) -> Option<Self> {
        let end = len
            .checked_mul(std::mem::size_of::<T>())?
            .checked_add(start)?;
        let slice = (*bytes).as_ref().get(start..end)?;
        let usable =
            cfg!(target_endian = "little") && bytemuck::try_cast_slice::<u8, T>(slice).is_ok();
        usable.then_some(Shared {
            bytes,
            start,
            len,
            owned: false,
            element: PhantomData,
        })
    }

    /// Owned values, behind the same type.
    pub fn from_vec(values: Vec<T>) -> Self {
        let len = values.len();
        let bytes: SharedBytes = Arc::new(PodVec(values));
        let mut shared = Shared::new(bytes, 0, len).expect("a Vec is aligned for its own type");
        shared.owned = true;
        shared
    }

    /// Whether the values are a vector of their own ([`Shared::from_vec`]),
    /// not a range of a file.
    pub fn is_owned(&self) -> bool {
        self.owned
    }

    /// The values.
    pub fn as_slice(&self) -> &[T] {
        // Checked in `new`: in range and aligned (the bytes never move).
        let end = self.start + std::mem::size_of::<T>() * self.len;
        bytemuck::cast_slice(&(*self.bytes).as_ref()[self.start..end])
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A matrix's values as they lie in memory, for code that widens halves to
/// `f32` itself as it reads them (the fast model's kernels). Row-major.
#[derive(Clone, Copy, Debug)]
pub enum Stored<'a> {
    F32(ArrayView2<'a, f32>),
    F16(ArrayView2<'a, f16>),
    BF16(ArrayView2<'a, bf16>),
}

impl<'a> Stored<'a> {
    /// The transpose, as a view (no copy).
    pub fn t(self) -> Stored<'a> {
        match self {
            Stored::F32(w) => Stored::F32(w.reversed_axes()),
            Stored::F16(w) => Stored::F16(w.reversed_axes()),
            Stored::BF16(w) => Stored::BF16(w.reversed_axes()),
        }
    }

    /// `(rows, cols)`.
    pub fn dim(&self) -> (usize, usize) {
        match self {
            Stored::F32(w) => w.dim(),
            Stored::F16(w) => w.dim(),
            Stored::BF16(w) => w.dim(),
        }
    }

    /// The bytes of the values as they lie in memory, row-major; `None` for
    /// a view that is not contiguous in that order (a transpose). For the
    /// kernels that ask for weights to be fetched ahead of their use.
    pub(crate) fn bytes(self) -> Option<&'a [u8]> {
        match self {
            Stored::F32(w) => w.to_slice().map(bytemuck::cast_slice),
            Stored::F16(w) => w
                .to_slice()
                .map(|h| bytemuck::cast_slice(h.reinterpret_cast())),
            Stored::BF16(w) => w
                .to_slice()
                .map(|h| bytemuck::cast_slice(h.reinterpret_cast())),
        }
    }
}

/// A read-only weight matrix `[rows, cols]`: owned, or read in place from a
/// memory-mapped checkpoint ([`Shared`], row-major); `f32`, `f16` or `bf16`.
///
/// ```
/// use ndarray::array;
/// use gpt2_ndarray::checkpoint::Dtype;
/// use gpt2_ndarray::weights::Matrix;
/// let w = Matrix::from(array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
/// assert_eq!(w.dim(), (2, 3));
/// assert_eq!(w.view().row(1), array![4.0, 5.0, 6.0]);
/// assert!(!w.is_shared());
///
/// // Stored as f16: half the bytes; these values are exact in f16.
/// let h = w.to_dtype(Dtype::F16);
/// assert_eq!((h.dtype(), h.stored_bytes()), (Dtype::F16, 12));
/// assert!(h.as_f32().is_none()); // no f32 values to view in place...
/// assert_eq!(h.to_f32(), w.view()); // ...but an upcast copy
/// ```
#[derive(Clone)]
pub struct Matrix {
    data: Data,
    dim: (usize, usize),
}

#[derive(Clone)]
enum Data {
    Owned(Array2<f32>),
    Shared(Shared<f32>),
    /// The bits of `f16` values.
    F16(Shared<u16>),
    /// The bits of `bf16` values.
    BF16(Shared<u16>),
}

impl Matrix {
    /// A matrix of `dim` whose row-major values are `values`; `None` when the
    /// numbers of values and of elements differ.
    pub fn shared(values: Shared<f32>, dim: (usize, usize)) -> Option<Self> {
        Self::with_data(Data::Shared(values), dim)
    }

    /// A matrix of `dim` whose row-major values are half-precision numbers
    /// (`dtype` [`Dtype::F16`] or [`Dtype::BF16`]) given as their bits;
    /// `None` for another dtype or when the numbers of values and of
    /// elements differ.
    pub fn half(dtype: Dtype, bits: Shared<u16>, dim: (usize, usize)) -> Option<Self> {
        let data = match dtype {
            Dtype::F16 => Data::F16(bits),
            Dtype::BF16 => Data::BF16(bits),
            Dtype::F32 | Dtype::F64 => return None,
        };
        Self::with_data(data, dim)
    }

    fn with_data(data: Data, dim: (usize, usize)) -> Option<Self> {
        let len = match &data {
            Data::Owned(a) => a.len(),
            Data::Shared(s) => s.len(),
            Data::F16(s) | Data::BF16(s) => s.len(),
        };
        (dim.0.checked_mul(dim.1)? == len).then_some(Matrix { data, dim })
    }

    /// The dtype the values are stored in: [`Dtype::F32`], [`Dtype::F16`] or
    /// [`Dtype::BF16`].
    pub fn dtype(&self) -> Dtype {
        match self.data {
            Data::Owned(_) | Data::Shared(_) => Dtype::F32,
            Data::F16(_) => Dtype::F16,
            Data::BF16(_) => Dtype::BF16,
        }
    }

    /// Bytes the values take in memory (`len · dtype size`).
    pub fn stored_bytes(&self) -> usize {
        self.len() * self.dtype().size()
    }

    /// The `f32` values as an array view, wherever they are stored.
    ///
    /// # Panics
    ///
    /// If the matrix is stored in half precision: there are no `f32` values
    /// to view. Use [`Matrix::to_f32`] (an upcast copy), upcast the whole
    /// model once (`Gpt2::to_dtype(Dtype::F32)`), or read the halves as
    /// stored ([`Matrix::stored`]).
    #[track_caller]
    pub fn view(&self) -> ArrayView2<'_, f32> {
        self.as_f32().unwrap_or_else(|| {
            panic!(
                "Matrix::view on a {} matrix {:?}: it holds no f32 values; call to_f32() \
                 (an upcast copy) or upcast the model first (to_dtype(Dtype::F32))",
                self.dtype(),
                self.dim
            )
        })
    }

    /// The values as an `f32` view, or `None` when they are stored in half
    /// precision.
    pub fn as_f32(&self) -> Option<ArrayView2<'_, f32>> {
        match &self.data {
            Data::Owned(a) => Some(a.view()),
            Data::Shared(s) => Some(
                ArrayView2::from_shape(self.dim, s.as_slice())
                    .expect("the length was checked against the shape"),
            ),
            Data::F16(_) | Data::BF16(_) => None,
        }
    }

    /// The values in `f32`: a view of `f32` storage, an upcast copy of half
    /// storage (exact: every `f16` and `bf16` is an `f32`).
    pub fn to_f32(&self) -> CowArray<'_, f32, Ix2> {
        match self.stored() {
            Stored::F32(w) => CowArray::from(w),
            Stored::F16(w) => CowArray::from(w.mapv(f16::to_f32)),
            Stored::BF16(w) => CowArray::from(w.mapv(bf16::to_f32)),
        }
    }

    /// Row `i` in `f32` (a view, or an upcast copy of a half row).
    pub fn row_f32(&self, i: usize) -> CowArray<'_, f32, Ix1> {
        match self.stored() {
            Stored::F32(w) => CowArray::from(w.index_axis_move(ndarray::Axis(0), i)),
            Stored::F16(w) => CowArray::from(w.row(i).mapv(f16::to_f32)),
            Stored::BF16(w) => CowArray::from(w.row(i).mapv(bf16::to_f32)),
        }
    }

    /// The values as they are stored (row-major), for code that converts as
    /// it reads.
    pub fn stored(&self) -> Stored<'_> {
        let shape = |len: usize| {
            debug_assert_eq!(len, self.len());
            self.dim
        };
        match &self.data {
            Data::Owned(a) => Stored::F32(a.view()),
            Data::Shared(s) => Stored::F32(
                ArrayView2::from_shape(shape(s.len()), s.as_slice()).expect("checked length"),
            ),
            Data::F16(s) => Stored::F16(
                ArrayView2::from_shape(shape(s.len()), s.as_slice().reinterpret_cast())
                    .expect("checked length"),
            ),
            Data::BF16(s) => Stored::BF16(
                ArrayView2::from_shape(shape(s.len()), s.as_slice().reinterpret_cast())
                    .expect("checked length"),
            ),
        }
    }

    /// The matrix stored as `dtype` ([`Dtype::F32`], [`Dtype::F16`] or
    /// [`Dtype::BF16`]): each value rounded to the nearest `dtype` value
    /// (ties to even), or a cheap clone when it already is `dtype`. Values
    /// beyond the half range round to ±inf (`f16` holds at most 65504).
    ///
    /// # Panics
    ///
    /// For [`Dtype::F64`], which is never a storage dtype.
    pub fn to_dtype(&self, dtype: Dtype) -> Matrix {
        if dtype == self.dtype() {
            return self.clone();
        }
        if dtype == Dtype::F32 {
            return Matrix::from(self.to_owned());
        }
        let values = self.to_f32();
        let values = values.as_standard_layout();
        let values = values.as_slice().expect("standard layout");
        let bits: Vec<u16> = match dtype {
            Dtype::F32 => unreachable!("converted above"),
            Dtype::F16 => values.iter().map(|&v| f16::from_f32(v).to_bits()).collect(),
            Dtype::BF16 => values
                .iter()
                .map(|&v| bf16::from_f32(v).to_bits())
                .collect(),
            Dtype::F64 => panic!("f64 is not a storage dtype of a weight matrix"),
        };
        Matrix::half(dtype, Shared::from_vec(bits), self.dim).expect("as many values as elements")
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
        match &self.data {
            Data::Owned(_) => false,
            Data::Shared(_) => true,
            Data::F16(s) | Data::BF16(s) => !s.is_owned(),
        }
    }

    /// An owned `f32` copy of the values (upcast from half storage).
    pub fn to_owned(&self) -> Array2<f32> {
        self.to_f32().into_owned()
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

/// Equal when stored in the same dtype with the same values.
impl PartialEq for Matrix {
    fn eq(&self, other: &Self) -> bool {
        self.dtype() == other.dtype() && self.to_f32() == other.to_f32()
    }
}

impl fmt::Debug for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let storage = if self.is_shared() { "shared" } else { "owned" };
        write!(f, "Matrix({storage}, {}) {:?}", self.dtype(), self.to_f32())
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
