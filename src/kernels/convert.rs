//! Half precision to `f32`, as the kernels read it: the twin of the
//! reference tier's upcast ([`Matrix::to_f32`](crate::weights::Matrix::to_f32),
//! which calls the `half` crate's `to_f32` on each value).
//!
//! A weight stored as `f16` or `bf16` is widened to `f32` the moment a kernel
//! loads it, inside the loop that uses it, so that the arithmetic is `f32`
//! but only two bytes per weight come from memory. The kernels are generic
//! over the stored [`Element`] type and compiled for every SIMD level of
//! [`simd`](super::simd); the widening below is straight-line integer and
//! float arithmetic that vectorises with them.
//!
//! Both conversions are exact (every `f16` and `bf16` is an `f32`):
//!
//! - **bf16** is the top half of an `f32`: `bits << 16`.
//! - **f16** (1 sign, 5 exponent, 10 mantissa bits, exponent bias 15): a
//!   normal number moves its exponent and mantissa into place,
//!   `(bits & 0x7fff) << 13`, and rebiases the exponent by `127 − 15 = 112`;
//!   infinities and NaNs (exponent 31) get the all-ones exponent 255 (112
//!   more); a subnormal `m · 2⁻²⁴` (exponent 0) is converted from the integer
//!   `m` and scaled, which stays exact and never computes with a subnormal
//!   `f32` (slow on some CPUs).
//!
//! Because a kernel's arithmetic is the same for every element type, a
//! product with a half matrix gives **the same bits** as the product with its
//! `f32` upcast (the same kernel, the same order of operations); only the
//! packed GEMM for many rows, which converts panel by panel, may add in
//! another order.

use half::{bf16, f16};
use ndarray::{Array2, ArrayView1, ArrayView2};

use super::simd::simd_targets;
#[cfg(target_arch = "x86_64")]
use super::simd::{level, Simd};

/// A type weights are stored in: `f32`, `f16` or `bf16`.
pub trait Element: Copy + Send + Sync + 'static {
    /// The value as an `f32` (exact).
    fn to_f32(self) -> f32;

    /// The values, when they already are `f32`s (no widening needed).
    fn slice_f32(_values: &[Self]) -> Option<&[f32]> {
        None
    }

    /// The matrix, when its values already are `f32`s.
    fn view_f32(_values: ArrayView2<'_, Self>) -> Option<ArrayView2<'_, f32>> {
        None
    }

    /// The values, when they are `f16`s (for the loops with a hardware
    /// conversion).
    fn slice_f16(_values: &[Self]) -> Option<&[f16]> {
        None
    }

    /// The values, when they are `bf16`s (for the loops that widen them by
    /// a shift).
    fn slice_bf16(_values: &[Self]) -> Option<&[bf16]> {
        None
    }
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    fn slice_f32(values: &[f32]) -> Option<&[f32]> {
        Some(values)
    }

    fn view_f32(values: ArrayView2<'_, f32>) -> Option<ArrayView2<'_, f32>> {
        Some(values)
    }
}

impl Element for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }

    fn slice_bf16(values: &[bf16]) -> Option<&[bf16]> {
        Some(values)
    }
}

impl Element for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16_bits_to_f32(self.to_bits())
    }

    fn slice_f16(values: &[f16]) -> Option<&[f16]> {
        Some(values)
    }
}

/// The `f32` value of the `f16` whose bits are `h` (see the module's notes).
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    const REBIAS: u32 = (127 - 15) << 23;
    const TWO_TO_MINUS_24: f32 = 1.0 / 16_777_216.0;
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let magnitude = h & 0x7fff; // exponent and mantissa
    let mut bits = (magnitude << 13) + REBIAS;
    if magnitude >= 0x7c00 {
        bits += REBIAS; // inf, NaN: exponent 31 + 224 = 255
    }
    if magnitude < 0x0400 {
        bits = (magnitude as f32 * TWO_TO_MINUS_24).to_bits(); // zero, subnormal
    }
    f32::from_bits(bits | sign)
}

/// `x` widened to `f32` (a new row-major matrix), a row at a time with
/// [`widen_lane`].
pub fn widened<E: Element>(x: ArrayView2<E>) -> Array2<f32> {
    let mut out = Array2::zeros(x.raw_dim());
    for (row, mut wide) in x.rows().into_iter().zip(out.rows_mut()) {
        widen_lane(
            row,
            wide.as_slice_mut().expect("a fresh matrix is row-major"),
        );
    }
    out
}

/// [`widen`] for a lane of any stride: in place of `widen`'s vector
/// conversion, one value at a time when the lane is not contiguous.
pub fn widen_lane<E: Element>(lane: ArrayView1<E>, dst: &mut [f32]) {
    match lane.as_slice() {
        Some(lane) => widen(lane, dst),
        None => dst.iter_mut().zip(lane).for_each(|(w, x)| *w = x.to_f32()),
    }
}

/// `dst[i] = src[i]` widened to `f32` (the slices have one length); `f16`
/// with `vcvtph2ps` where the level is AVX-512 or AVX2 (F16C).
#[inline]
pub fn widen<E: Element>(src: &[E], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(src) = E::slice_f16(src) {
        match level() {
            // SAFETY: the level is `Avx512` only on a CPU that was detected
            // to have AVX-512 F (`simd::level`).
            Simd::Avx512 => return unsafe { super::half_avx512::widen_f16(src, dst) },
            // SAFETY: the level is `Avx2` (or above) only on a CPU that was
            // detected to have AVX2 and F16C (`simd::level`).
            Simd::Avx2 => return unsafe { super::half_f16c::widen_f16(src, dst) },
            _ => {}
        }
    }
    widen_lanes(src, dst)
}

simd_targets! {
    /// [`widen`] in plain Rust, vectorised for each level.
    fn widen_lanes<E: Element>(src: &[E], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "widen: lengths differ");
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
}
