//! The loops of the matrix–vector kernels written for AVX-512, for weights
//! of every stored type: `f16` widened by AVX-512's own conversion
//! (`vcvtph2ps` widens 16 halves to 16 `f32`s in one instruction, where the
//! portable bit arithmetic of [`super::convert`] takes about ten), `bf16` by
//! a shift, `f32` as it is ([`load16`]); the passes over rows of weights
//! ask for the rows ahead of them, which the compiler's own loops cannot.
//! Both keep decoding bound by memory.
//!
//! Each function does exactly the arithmetic of the generic loop it stands
//! for, in the same order (multiplies and adds, never fused), so the results
//! have the same bits; `tests/kernels.rs` checks it at every SIMD level.
//! Called only where [`super::simd::level`] is `Avx512`.

use std::arch::x86_64::{
    __m256i, __m512, _mm256_add_ps, _mm256_castpd_ps, _mm256_castps256_ps128,
    _mm256_extractf128_ps, _mm256_loadu_si256, _mm512_add_ps, _mm512_castps512_ps256,
    _mm512_castps_pd, _mm512_cvtph_ps, _mm512_extractf64x4_pd, _mm512_loadu_ps, _mm512_mul_ps,
    _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32,
    _mm_movehl_ps, _mm_shuffle_ps,
};

use half::f16;
use ndarray::{ArrayView2, ArrayViewMut2};

use super::convert::Element;
use super::fastmath::LANES;
use super::gemm::{x86_scaled_row_passes, Output};

/// Lanes of one AVX-512 register of `f32`s.
const W: usize = 16;

/// `y[j..j + 16]` widened: 16 halves from `y.as_ptr() + j`.
///
/// # Safety
///
/// `j + 16 <= y.len()`, and the CPU has AVX-512 F.
#[inline(always)]
unsafe fn load_halves(y: &[f16], j: usize) -> __m512 {
    debug_assert!(j + W <= y.len());
    // SAFETY: the caller guarantees that 16 halves (32 bytes) from `j` are
    // inside `y`; an unaligned load needs no alignment.
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(y.as_ptr().add(j).cast::<__m256i>())) }
}

/// Sixteen values of `y` from `y[p]`, widened to `f32`.
///
/// # Safety
///
/// `p + 16 <= y.len()`, and the CPU has AVX-512 F.
#[inline(always)]
pub(super) unsafe fn load16<E: Element>(y: &[E], p: usize) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::{
        __m256i, _mm256_loadu_si256, _mm512_castsi512_ps, _mm512_cvtepu16_epi32, _mm512_loadu_ps,
        _mm512_slli_epi32,
    };
    debug_assert!(p + LANES <= y.len());
    // SAFETY (all three): the caller guarantees that 16 values from `p` are
    // inside `y`; unaligned loads need no alignment; AVX-512 F is there.
    unsafe {
        if let Some(y) = E::slice_f32(y) {
            _mm512_loadu_ps(y.as_ptr().add(p))
        } else if let Some(y) = E::slice_f16(y) {
            load_halves(y, p)
        } else if let Some(y) = E::slice_bf16(y) {
            // Its bits are the high half of the f32's. (Widened one value at
            // a time, as before, the bf16 head at B = 8 took 28–29 ms, two to
            // three times the f16 one's 9.6–13.5 ms; both take 5.5 ms with the
            // loops of `tile_avx512` as they are now; GPT-2 small, AMD Zen 4,
            // 2 threads.)
            let bits =
                _mm512_cvtepu16_epi32(_mm256_loadu_si256(y.as_ptr().add(p).cast::<__m256i>()));
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bits))
        } else {
            let piece: [f32; LANES] = std::array::from_fn(|l| y.get_unchecked(p + l).to_f32());
            _mm512_loadu_ps(piece.as_ptr())
        }
    }
}

/// [`super::convert::widen`] for `f16`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn widen_f16(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen: lengths differ");
    let n = src.len() / W * W;
    for j in (0..n).step_by(W) {
        // SAFETY: j + 16 <= n <= src.len() = dst.len(); AVX-512 F is enabled.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(j), load_halves(src, j)) }
    }
    for (d, s) in dst[n..].iter_mut().zip(&src[n..]) {
        *d = s.to_f32();
    }
}

// The passes of `gemm::scaled_row_passes` for several sums at once, at
// this level (the one body of both x86 levels: `gemm::x86_scaled_row_passes`).
x86_scaled_row_passes!(
    target_feature = "avx512f",
    lanes = W,
    vector = __m512,
    set1 = _mm512_set1_ps,
    mul = _mm512_mul_ps,
    add = _mm512_add_ps,
    load = load16,
    loadu = _mm512_loadu_ps,
    storeu = _mm512_storeu_ps,
);

/// `fastmath::dot`: 16 partial sums `acc[l] += x[l]·y[l]` (`y` widened as
/// it is loaded), then the same pairwise fold in registers, plus the tail
/// summed in order: the same bits.
#[target_feature(enable = "avx512f")]
pub(super) fn dot<E: Element>(x: &[f32], y: &[E]) -> f32 {
    assert_eq!(x.len(), y.len(), "dot_lanes: lengths differ");
    const { assert!(LANES == W) };
    let n = x.len() / W * W;
    let tail: f32 = x[n..]
        .iter()
        .zip(&y[n..])
        .map(|(a, b)| a * b.to_f32())
        .sum();
    let mut acc = _mm512_setzero_ps();
    for j in (0..n).step_by(W) {
        // SAFETY: j + 16 <= n <= x.len() = y.len(); AVX-512 F is enabled.
        unsafe {
            let xv = _mm512_loadu_ps(x.as_ptr().add(j));
            acc = _mm512_add_ps(acc, _mm512_mul_ps(xv, load16(y, j)));
        }
    }
    fold_in_register(acc) + tail
}

/// `gemm::dot_columns` at this level: [`dot`] inlined into the loop over
/// the columns (`gemm::dot_columns_by`).
#[target_feature(enable = "avx512f")]
pub(super) fn dot_columns<E: Element>(
    rows: &[&[f32]],
    b_band: ArrayView2<E>,
    c_band: ArrayViewMut2<f32>,
    output: Output,
) {
    super::gemm::dot_columns_by(rows, b_band, c_band, output, |x, y| dot(x, y))
}

/// `fastmath::fold_lanes(acc, +)` without leaving the registers: the same
/// pairwise sums in the same order (lanes `l` and `l + 8`, then `l + 4`,
/// `l + 2`, `l + 1`), so the same bits, without a call and a store per dot
/// product (the head makes 50 257 of them per token).
#[target_feature(enable = "avx512f")]
pub(super) fn fold_in_register(acc: __m512) -> f32 {
    let low = _mm512_castps512_ps256(acc);
    let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
    let s8 = _mm256_add_ps(low, high);
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<0b01>(s2, s2));
    _mm_cvtss_f32(s1)
}
