//! The loops of the matrix–vector kernels written for AVX2 and F16C, for
//! weights of every stored type: `f16` widened by F16C's conversion
//! (`vcvtph2ps` widens 8 halves to 8 `f32`s in one instruction, where the
//! portable bit arithmetic of [`super::convert`] takes about ten per
//! vector), `bf16` by a shift, `f32` as it is ([`load8`]). For CPUs without
//! AVX-512: what [`super::half_avx512`] is to AVX-512 CPUs, at 8 lanes
//! instead of 16.
//!
//! Each function does exactly the arithmetic of the generic loop it stands
//! for, in the same order (multiplies and adds, never fused), so the results
//! have the same bits; `tests/kernels.rs` checks it at every SIMD level.
//! Called only where [`super::simd::level`] is `Avx2` and the CPU has F16C
//! ([`super::simd::has_f16c`]).

use std::arch::x86_64::{
    __m128i, __m256, _mm256_add_ps, _mm256_castps256_ps128, _mm256_cvtph_ps, _mm256_extractf128_ps,
    _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_loadu_si128, _mm_movehl_ps, _mm_shuffle_ps,
};

use half::f16;
use ndarray::{ArrayView2, ArrayViewMut2};

use super::convert::Element;
use super::fastmath::LANES;
use super::gemm::{x86_scaled_row_passes, Output};

/// Lanes of one AVX register of `f32`s.
const W: usize = 8;

/// `y[j..j + 8]` widened: 8 halves from `y.as_ptr() + j`.
///
/// # Safety
///
/// `j + 8 <= y.len()`, and the CPU has AVX and F16C.
#[inline(always)]
pub(super) unsafe fn load_halves(y: &[f16], j: usize) -> __m256 {
    debug_assert!(j + W <= y.len());
    // SAFETY: the caller guarantees that 8 halves (16 bytes) from `j` are
    // inside `y`; an unaligned load needs no alignment.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(y.as_ptr().add(j).cast::<__m128i>())) }
}

/// Eight values of `y` from `y[p]`, widened to `f32`.
///
/// # Safety
///
/// `p + 8 <= y.len()`, and the CPU has AVX2 and F16C.
#[inline(always)]
pub(super) unsafe fn load8<E: Element>(y: &[E], p: usize) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::{
        __m128i, _mm256_castsi256_ps, _mm256_cvtepu16_epi32, _mm256_loadu_ps, _mm256_slli_epi32,
        _mm_loadu_si128,
    };
    debug_assert!(p + 8 <= y.len());
    // SAFETY (all three): the caller guarantees that 8 values from `p` are
    // inside `y`; unaligned loads need no alignment; AVX2 and F16C are there.
    unsafe {
        if let Some(y) = E::slice_f32(y) {
            _mm256_loadu_ps(y.as_ptr().add(p))
        } else if let Some(y) = E::slice_f16(y) {
            load_halves(y, p)
        } else if let Some(y) = E::slice_bf16(y) {
            // Its bits are the high half of the f32's.
            let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(y.as_ptr().add(p).cast::<__m128i>()));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
        } else {
            let piece: [f32; 8] = std::array::from_fn(|l| y.get_unchecked(p + l).to_f32());
            _mm256_loadu_ps(piece.as_ptr())
        }
    }
}

/// [`super::convert::widen`] for `f16`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn widen_f16(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen: lengths differ");
    let n = src.len() / W * W;
    for j in (0..n).step_by(W) {
        // SAFETY: j + 8 <= n <= src.len() = dst.len(); AVX2 and F16C are enabled.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(j), load_halves(src, j)) }
    }
    for (d, s) in dst[n..].iter_mut().zip(&src[n..]) {
        *d = s.to_f32();
    }
}

// The passes of `gemm::scaled_row_passes` for several sums at once, at
// this level (the one body of both x86 levels: `gemm::x86_scaled_row_passes`).
x86_scaled_row_passes!(
    target_feature = "avx2,f16c",
    lanes = W,
    vector = __m256,
    set1 = _mm256_set1_ps,
    mul = _mm256_mul_ps,
    add = _mm256_add_ps,
    load = load8,
    loadu = _mm256_loadu_ps,
    storeu = _mm256_storeu_ps,
);

/// `fastmath::dot`: 16 partial sums `acc[l] += x[l]·y[l]` (two registers
/// of 8: lanes 0–7 and 8–15; `y` widened as it is loaded), then the same
/// pairwise fold in registers, plus the tail summed in order: the same bits.
#[target_feature(enable = "avx2,f16c")]
pub(super) fn dot<E: Element>(x: &[f32], y: &[E]) -> f32 {
    assert_eq!(x.len(), y.len(), "dot_lanes: lengths differ");
    const { assert!(LANES == 2 * W) };
    let n = x.len() / LANES * LANES;
    let tail: f32 = x[n..]
        .iter()
        .zip(&y[n..])
        .map(|(a, b)| a * b.to_f32())
        .sum();
    let (mut low, mut high) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for j in (0..n).step_by(LANES) {
        // SAFETY: j + 16 <= n <= x.len() = y.len(); AVX2 and F16C are enabled.
        unsafe {
            let (x0, x1) = (
                _mm256_loadu_ps(x.as_ptr().add(j)),
                _mm256_loadu_ps(x.as_ptr().add(j + W)),
            );
            low = _mm256_add_ps(low, _mm256_mul_ps(x0, load8(y, j)));
            high = _mm256_add_ps(high, _mm256_mul_ps(x1, load8(y, j + W)));
        }
    }
    fold_pair(low, high) + tail
}

/// `gemm::dot_columns` at this level: [`dot`] inlined into the loop over
/// the columns (`gemm::dot_columns_by`).
#[target_feature(enable = "avx2,f16c")]
pub(super) fn dot_columns<E: Element>(
    rows: &[&[f32]],
    b_band: ArrayView2<E>,
    c_band: ArrayViewMut2<f32>,
    output: Output,
) {
    super::gemm::dot_columns_by(rows, b_band, c_band, output, |x, y| dot(x, y))
}

/// `fastmath::fold_lanes(acc, +)` of the 16 lane sums held as lanes 0–7
/// (`low`) and 8–15 (`high`), without leaving the registers: the same
/// pairwise sums in the same order (lanes `l` and `l + 8`, then `l + 4`,
/// `l + 2`, `l + 1`), so the same bits.
#[target_feature(enable = "avx2")]
pub(super) fn fold_pair(low: __m256, high: __m256) -> f32 {
    let s8 = _mm256_add_ps(low, high);
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<0b01>(s2, s2));
    _mm_cvtss_f32(s1)
}
