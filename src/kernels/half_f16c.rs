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
use ndarray::ArrayView2;

use super::convert::Element;
use super::fastmath::LANES;
use super::gemm::prefetch_pass_ahead;

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

/// The passes of `gemm::scaled_row_passes::<R, E>` for `M` sums at once
/// (`acc` holds them one after the other, `xs` their inputs): each
/// `acc[t] += Σᵢ xs[t][i] · rows[i]`, `R` rows per pass, each pass
/// `acc[t] + (x₀w₀ + x₁w₁ + …)`; the last rows one by one,
/// `acc[t] + xᵢwᵢ`; the weights of any stored type widened as they are
/// loaded, once for all `M` sums (each sum gets the arithmetic it gets
/// alone). Each cache line of a pass's rows is first asked for
/// `GEMV_PREFETCH_ROWS` rows ahead, into the L2 cache.
#[target_feature(enable = "avx2,f16c")]
pub(super) fn scaled_row_passes<const R: usize, const M: usize, E: Element>(
    acc: &mut [f32],
    rows: ArrayView2<E>,
    xs: [&[f32]; M],
) {
    let n = rows.ncols();
    assert_eq!(acc.len(), M * n, "one weight per sum");
    if n == 0 {
        return;
    }
    let k = rows.nrows();
    for x in xs {
        assert_eq!(x.len(), k, "one input per row");
    }
    let row = |i: usize| rows.row(i).to_slice().expect("unit column stride");
    let vectors = n / W * W;
    let mut i = 0;
    while i + R <= k {
        let w: [&[E]; R] = std::array::from_fn(|r| row(i + r));
        let x: [[f32; R]; M] = std::array::from_fn(|t| std::array::from_fn(|r| xs[t][i + r]));
        let xv: [[__m256; R]; M] =
            std::array::from_fn(|t| std::array::from_fn(|r| _mm256_set1_ps(x[t][r])));
        for j in (0..vectors).step_by(W) {
            prefetch_pass_ahead::<R, E>(&rows, i, j);
            // SAFETY: every row has n values, acc has M·n (asserted above),
            // and j + 8 <= n; AVX2 and F16C are enabled.
            unsafe {
                let wv: [__m256; R] = std::array::from_fn(|r| load8(w[r], j));
                for (t, xv) in xv.iter().enumerate() {
                    let mut s = _mm256_mul_ps(xv[0], wv[0]);
                    for r in 1..R {
                        s = _mm256_add_ps(s, _mm256_mul_ps(xv[r], wv[r]));
                    }
                    let y = acc.as_mut_ptr().add(t * n + j);
                    _mm256_storeu_ps(y, _mm256_add_ps(_mm256_loadu_ps(y), s));
                }
            }
        }
        for (x, acc) in x.iter().zip(acc.chunks_exact_mut(n)) {
            for (j, y) in acc.iter_mut().enumerate().skip(vectors) {
                let mut s = x[0] * w[0][j].to_f32();
                for r in 1..R {
                    s += x[r] * w[r][j].to_f32();
                }
                *y += s;
            }
        }
        i += R;
    }
    for (i, w) in rows.rows().into_iter().enumerate().skip(i) {
        let w = w.to_slice().expect("unit column stride");
        let x: [f32; M] = std::array::from_fn(|t| xs[t][i]);
        let xv: [__m256; M] = std::array::from_fn(|t| _mm256_set1_ps(x[t]));
        for j in (0..vectors).step_by(W) {
            // SAFETY: as above.
            unsafe {
                let wv = load8(w, j);
                for (t, &xv) in xv.iter().enumerate() {
                    let y = acc.as_mut_ptr().add(t * n + j);
                    _mm256_storeu_ps(y, _mm256_add_ps(_mm256_loadu_ps(y), _mm256_mul_ps(xv, wv)));
                }
            }
        }
        for (&xi, acc) in x.iter().zip(acc.chunks_exact_mut(n)) {
            for (y, v) in acc.iter_mut().zip(w).skip(vectors) {
                *y += xi * v.to_f32();
            }
        }
    }
}

/// `fastmath::dot::<f16>`: 16 partial sums `acc[l] += x[l]·y[l]` (two
/// registers of 8: lanes 0–7 and 8–15), then the same pairwise fold, plus
/// the tail summed in order.
#[target_feature(enable = "avx2,f16c")]
pub(super) fn dot_f16(x: &[f32], y: &[f16]) -> f32 {
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
            low = _mm256_add_ps(low, _mm256_mul_ps(x0, load_halves(y, j)));
            high = _mm256_add_ps(high, _mm256_mul_ps(x1, load_halves(y, j + W)));
        }
    }
    fold_pair(low, high) + tail
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
