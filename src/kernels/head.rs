//! The tied head for a batch of decoding steps: `c = a · wteᵀ` for a few
//! rows of `a` (`[m, C]`, one per sequence) and a matrix whose **columns**
//! are contiguous (`wteᵀ`: each column is a row of `wte [vocab, C]`).
//!
//! One to three rows are [`gemv_columns`](super::gemm)' job: a dot product
//! per output, each row of `wte` read once. From
//! [`HEAD_MIN_ROWS`](super::gemm::HEAD_MIN_ROWS) rows (B) to
//! [`HEAD_MAX_ROWS`](super::gemm::HEAD_MAX_ROWS), this kernel's: with B rows
//! that kernel would read every row
//! of `wte` B times from the L1 cache, one dot product after the other, and a
//! packed GEMM would first copy all of `wteᵀ` (154 MB in `f32` for GPT-2)
//! into its own layout, every step. This kernel does B dot products per row
//! of `wte` instead. With AVX-512, a register tile of 4 rows of `a` × 4
//! rows of `wte` keeps 16 registers of 16 partial sums, so each piece of 16
//! weights is loaded (and, for a half weight, widened) once and used by 4
//! rows of `a`, and each piece of `a` by 4 rows of `wte`; the 4 rows of
//! `wte` of a tile stay in the L1 cache while every group of 4 rows of `a`
//! passes over them, and the rows of the tile after next are prefetched
//! into the L2 cache meanwhile, so each row of `wte` comes from memory once
//! per step whatever B is. (When all of `a` would fit in the L1 cache beside
//! 2 rows of `wte` but not beside 4, as a batch of 8 does over GPT-2's `f32`
//! head, the tile is 8 rows of `a` × 2 of `wte` instead: see
//! [`tall_tile_fits`].) With
//! AVX2 (16 registers of 8 lanes) the tile is 2 rows of `a` × 2 rows of
//! `wte`, each sum's 16 lanes in two registers: eight chains of adds, enough
//! to hide their latency, which a single dot product (two chains) cannot. At the other levels (AVX,
//! portable/NEON) the band is the matrix–vector kernel's loop (one column at
//! a time, its dot product with every row, the column in the L1 cache),
//! compiled for the level: `wte` is still read from memory once, but without
//! the register tile.
//!
//! **Summation order.** Every output is exactly
//! [`fastmath::dot`](super::fastmath)'s sum — 16 lane sums
//! `acc[l] += x[16i + l] · y[16i + l]` (a multiply, then an add: never
//! fused), folded pairwise in the same fixed order, plus the last `k mod 16`
//! products added in order — so it has the same bits as the matrix–vector
//! kernel that takes fewer rows, at every SIMD level and for every element
//! type: a sequence's
//! logits in a batch of any size are the bits it gets alone. Each output is
//! computed by one thread, and the split into bands of columns depends on
//! the shapes only, so the result does not depend on the thread count.

use ndarray::{ArrayView2, ArrayViewMut2};

use super::convert::Element;
#[cfg(target_arch = "x86_64")]
use super::fastmath::{dot_lanes, LANES};
use super::gemm::{by_column_bands, dot_columns, Output, Threads};
use super::simd;
#[cfg(target_arch = "x86_64")]
use super::simd::Simd;

/// Columns of `b` (rows of `wte`) per task: fixed, so that the split does
/// not depend on the thread count.
const HEAD_BAND: usize = 256;

/// `c (+)= a · b` for `a: [m, k]` and `b: [k, n]` with contiguous columns
/// (`b.strides()[0] == 1`), every output the [`dot`](super::fastmath::dot) of a row of `a` and a
/// column of `b`.
pub(super) fn dot_tiles<E: Element>(
    a: ArrayView2<f32>,
    b: ArrayView2<E>,
    c: ArrayViewMut2<f32>,
    output: Output,
    threads: Threads,
) {
    debug_assert_eq!(b.strides()[0], 1, "columns of b contiguous");
    let level = simd::level();
    by_column_bands(a, b, c, HEAD_BAND, threads, |rows, b_band, c_band| {
        #[cfg(target_arch = "x86_64")]
        if level >= Simd::Avx2 {
            let columns: Vec<&[E]> = b_band
                .columns()
                .into_iter()
                .map(|col| col.to_slice().expect("unit row stride"))
                .collect();
            return match level {
                // SAFETY (both AVX-512 arms): the level is `Avx512` only on
                // a CPU that was detected to have AVX-512 F (see `simd::level`).
                Simd::Avx512 if tall_tile_fits::<E>(rows.len(), b_band.nrows()) => {
                    band_tiles(rows, &columns, c_band, output, |xs, ys, next| unsafe {
                        tile_avx512::<E, RA_TALL, RW_TALL>(xs, ys, next)
                    })
                }
                Simd::Avx512 => band_tiles(rows, &columns, c_band, output, |xs, ys, next| unsafe {
                    tile_avx512::<E, RA, RW>(xs, ys, next)
                }),
                _ => band_tiles(rows, &columns, c_band, output, |xs, ys, next| {
                    // SAFETY: the level is `Avx2` only on a CPU that was
                    // detected to have AVX2 and F16C (see `simd::level`).
                    unsafe { tile_avx2::<E, RA_AVX2>(xs, ys, next) }
                }),
            };
        }
        let _ = level;
        // Below AVX2: the matrix–vector kernel's loop, column by column,
        // each column's dot product with every row (the column stays in the
        // L1 cache while the rows pass over it).
        dot_columns(rows, b_band, c_band, output)
    });
}

/// One band of [`dot_tiles`] in register tiles: `c[t, j] (+)= dot(rows[t],
/// columns[j])`, `tile` computing `RA` rows × `RW` columns at once (and
/// prefetching the columns of the tile [`PREFETCH_TILES`] further on when
/// it is given them), the rows and columns past the last whole tile one
/// [`dot_lanes`] at a time (the same sum). Each tile's columns stay in the L1 cache while every group of rows
/// passes over them.
#[cfg(target_arch = "x86_64")]
fn band_tiles<E: Element, const RA: usize, const RW: usize>(
    rows: &[&[f32]],
    columns: &[&[E]],
    mut c: ArrayViewMut2<f32>,
    output: Output,
    tile: impl Fn([&[f32]; RA], [&[E]; RW], Option<[&[E]; RW]>) -> [[f32; RW]; RA],
) {
    let (m, n) = (rows.len(), columns.len());
    let (m_tiled, n_tiled) = (m / RA * RA, n / RW * RW);
    for j0 in (0..n_tiled).step_by(RW) {
        let ys: [&[E]; RW] = std::array::from_fn(|j| columns[j0 + j]);
        // The rows of `wte` of the tile PREFETCH_TILES further on, fetched
        // while the first group of rows runs on this one (the band's last
        // tiles fetch nothing).
        let ahead = PREFETCH_TILES * RW;
        let next: Option<[&[E]; RW]> =
            (j0 + ahead + RW <= n_tiled).then(|| std::array::from_fn(|j| columns[j0 + ahead + j]));
        for t0 in (0..m_tiled).step_by(RA) {
            let xs: [&[f32]; RA] = std::array::from_fn(|i| rows[t0 + i]);
            let sums = tile(xs, ys, if t0 == 0 { next } else { None });
            for (i, sums) in sums.iter().enumerate() {
                for (j, &v) in sums.iter().enumerate() {
                    output.store(&mut c[[t0 + i, j0 + j]], v);
                }
            }
        }
        for t in m_tiled..m {
            for (j, y) in ys.iter().enumerate() {
                output.store(&mut c[[t, j0 + j]], dot_lanes(rows[t], y));
            }
        }
    }
    for j in n_tiled..n {
        for (t, x) in rows.iter().enumerate() {
            output.store(&mut c[[t, j]], dot_lanes(x, columns[j]));
        }
    }
}

/// How many tiles ahead [`band_tiles`] prefetches the rows of `wte`, into
/// the L2 cache (`_MM_HINT_T1`), most likely because the L1 cache has too
/// few outstanding misses to keep the weights streaming at memory's
/// bandwidth (a reading of the timings below, not a counter: this machine
/// has none).
/// A tile ahead into the L1 cache, as before: the head at B = 8 took 9.9–10.8
/// ms, two tiles ahead into the L2 cache 7.2–8.2 ms (GPT-2 small's `wte`, AMD
/// EPYC Zen 4, 2 threads, the two builds alternated four times;
/// `docs/bench.md`).
#[cfg(target_arch = "x86_64")]
const PREFETCH_TILES: usize = 2;

/// Ask for the piece of `ys` at `p` to be brought into the L2 cache.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch<E, const RW: usize>(ys: [&[E]; RW], p: usize) {
    for y in ys {
        // A hint, never a fault: the address need not be valid (and
        // `wrapping_add` computes it without undefined behaviour).
        simd::prefetch_l2(y.as_ptr().wrapping_add(p));
    }
}

/// `piece(p)` for every piece of 16 below `full`, each after prefetching the
/// same piece of `next` when there is one: two loops, neither with a branch
/// inside. (As one loop with the prefetch under an `if`, and the sums then
/// folded in closures, the compiler kept a tile's sums in memory as well as
/// in registers: sixteen stores on every piece, twice as many as the
/// piece's arithmetic has cycles.)
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn each_piece<E, const RW: usize>(
    full: usize,
    next: Option<[&[E]; RW]>,
    mut piece: impl FnMut(usize),
) {
    match next {
        Some(next) => {
            for p in (0..full).step_by(LANES) {
                prefetch(next, p);
                piece(p);
            }
        }
        None => (0..full).step_by(LANES).for_each(piece),
    }
}

/// Rows of `a` in one AVX-512 tile.
#[cfg(target_arch = "x86_64")]
const RA: usize = 4;
/// Rows of `wte` (columns of `wteᵀ`) in one AVX-512 tile.
#[cfg(target_arch = "x86_64")]
const RW: usize = 4;
/// Rows of `a` in the tall AVX-512 tile (see [`tall_tile_fits`]).
#[cfg(target_arch = "x86_64")]
const RA_TALL: usize = 8;
/// Rows of `wte` in the tall AVX-512 tile.
#[cfg(target_arch = "x86_64")]
const RW_TALL: usize = 2;
/// The L1 data cache the tiles are chosen for: 32 KB, the smallest of the
/// x86 cores with AVX-512 (48 KB on recent Intel ones).
#[cfg(target_arch = "x86_64")]
const L1_BYTES: usize = 32 * 1024;

/// Whether [`dot_tiles`] takes the tall AVX-512 tile, 8 rows of `a` × 2 rows
/// of `wte`, for `m` rows of `a` of length `k`: when `m` is a multiple of 8,
/// `a` and the 4 rows of `wte` of a 4 × 4 tile do not fit in the L1 cache
/// together, and `a` and the 2 rows of a tall tile do. Every row of `a` is
/// then read from the L1 cache for every tile, instead of pushing the tile's
/// rows of `wte` (or itself) out of it. A decoding batch of 8 over GPT-2's
/// `f32` head is that case (24 KB of `a`, 12 KB in four rows of `wte`, 6 KB
/// in two): the head took 4.98–6.09 ms (best of 25) with the tall tile,
/// 6.07–6.52 ms with 4 × 4 (medians 5.61–6.48 and 6.76–7.92; AMD EPYC Zen
/// 4, 2 threads, the two tiles alternated four times). With `f16` weights
/// a 4 × 4 tile fits (30 KB) and stays: the tall one was no faster there
/// (5.68–5.87 vs 5.34–5.70 ms), nor at 16 rows of `a` (where neither fits;
/// 9.93–11.42 vs 10.02–10.10 ms), and it was slower at 32 (18.5 vs 17.0).
#[cfg(target_arch = "x86_64")]
fn tall_tile_fits<E>(m: usize, k: usize) -> bool {
    let bytes = |a_rows: usize, w_rows: usize| {
        k * (a_rows * std::mem::size_of::<f32>() + w_rows * std::mem::size_of::<E>())
    };
    m.is_multiple_of(RA_TALL) && bytes(m, RW) > L1_BYTES && bytes(m, RW_TALL) <= L1_BYTES
}

/// The `RA × RW` dot products of `xs` and `ys` with AVX-512: [`dot`](super::fastmath::dot)'s 16
/// lane sums, one register each (`acc + x·y`, the multiply rounded, then the
/// add), folded pairwise in [`dot`](super::fastmath::dot)'s order, plus the tail in order. Per
/// piece of 16: `RW` loads of `wte` (widened once), `RA` loads of `a`, and
/// `RA · RW` multiplies and adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn tile_avx512<E: Element, const RA: usize, const RW: usize>(
    xs: [&[f32]; RA],
    ys: [&[E]; RW],
    next: Option<[&[E]; RW]>,
) -> [[f32; RW]; RA] {
    use std::arch::x86_64::_mm512_setzero_ps;
    let k = xs[0].len();
    for x in xs {
        assert_eq!(x.len(), k, "dot_lanes: lengths differ");
    }
    for y in ys {
        assert_eq!(y.len(), k, "dot_lanes: lengths differ");
    }
    let full = k / LANES * LANES;
    let mut acc = [[_mm512_setzero_ps(); RW]; RA];
    // The sums are folded below outside any closure (where
    // `fold_in_register`, an AVX-512 function, could not be inlined): with
    // `each_piece`'s loops, that keeps them in registers.
    // SAFETY: p + 16 <= full <= k, the length of every slice (asserted
    // above); AVX-512 F is enabled.
    each_piece(full, next, |p| unsafe { piece_avx512(&mut acc, xs, ys, p) });
    let mut sums = [[0.0f32; RW]; RA];
    for (i, row) in sums.iter_mut().enumerate() {
        for (j, sum) in row.iter_mut().enumerate() {
            let tail: f32 = xs[i][full..]
                .iter()
                .zip(&ys[j][full..])
                .map(|(a, b)| a * b.to_f32())
                .sum();
            *sum = super::half_avx512::fold_in_register(acc[i][j]) + tail;
        }
    }
    sums
}

/// One piece of 16 of [`tile_avx512`]: `acc[i][j] += xs[i][p..p + 16] ·
/// ys[j][p..p + 16]`, lane by lane, the multiply rounded, then the add.
///
/// # Safety
///
/// `p + 16` is at most the length of every slice, and the CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn piece_avx512<E: Element, const RA: usize, const RW: usize>(
    acc: &mut [[std::arch::x86_64::__m512; RW]; RA],
    xs: [&[f32]; RA],
    ys: [&[E]; RW],
    p: usize,
) {
    use std::arch::x86_64::{__m512, _mm512_add_ps, _mm512_loadu_ps, _mm512_mul_ps};
    // SAFETY: the caller guarantees that 16 values from `p` are inside every
    // slice and that AVX-512 F is there; unaligned loads need no alignment.
    unsafe {
        let y: [__m512; RW] = std::array::from_fn(|j| super::half_avx512::load16(ys[j], p));
        for i in 0..RA {
            let x = _mm512_loadu_ps(xs[i].as_ptr().add(p));
            for j in 0..RW {
                acc[i][j] = _mm512_add_ps(acc[i][j], _mm512_mul_ps(x, y[j]));
            }
        }
    }
}

/// Rows of `a` in one AVX2 tile.
#[cfg(target_arch = "x86_64")]
const RA_AVX2: usize = 2;
/// Rows of `wte` (columns of `wteᵀ`) in one AVX2 tile.
#[cfg(target_arch = "x86_64")]
const RW_AVX2: usize = 2;

/// The `R × RW_AVX2` dot products of `xs` and `ys` with AVX2: [`dot`](super::fastmath::dot)'s 16
/// lane sums as two registers of 8 each (`acc + x·y`, the multiply rounded,
/// then the add), folded pairwise in [`dot`](super::fastmath::dot)'s order, plus the tail in order.
/// Per piece of 16: `2 · RW_AVX2` loads of `wte` (widened once), `2 · R`
/// loads of `a`, and `2 · R · RW_AVX2` multiplies and adds — eight
/// independent sums in flight for `R = 2`, enough to hide the adds' latency,
/// and few enough registers (8 sums, 2 + 2 loads, a product) that none
/// spills to the stack.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
fn tile_avx2<E: Element, const R: usize>(
    xs: [&[f32]; R],
    ys: [&[E]; RW_AVX2],
    next: Option<[&[E]; RW_AVX2]>,
) -> [[f32; RW_AVX2]; R] {
    use std::arch::x86_64::_mm256_setzero_ps;
    let k = xs[0].len();
    for x in xs {
        assert_eq!(x.len(), k, "dot_lanes: lengths differ");
    }
    for y in ys {
        assert_eq!(y.len(), k, "dot_lanes: lengths differ");
    }
    let full = k / LANES * LANES;
    // The sums of row i and column j: lanes 0–7 in low[i][j], 8–15 in high[i][j].
    let mut low = [[_mm256_setzero_ps(); RW_AVX2]; R];
    let mut high = low;
    // SAFETY: p + 16 <= full <= k, the length of every slice (asserted
    // above); AVX2 and F16C are enabled.
    each_piece(full, next, |p| unsafe {
        piece_avx2(&mut low, &mut high, xs, ys, p)
    });
    let mut sums = [[0.0f32; RW_AVX2]; R];
    for i in 0..R {
        for j in 0..RW_AVX2 {
            let tail: f32 = xs[i][full..]
                .iter()
                .zip(&ys[j][full..])
                .map(|(a, b)| a * b.to_f32())
                .sum();
            sums[i][j] = super::half_f16c::fold_pair(low[i][j], high[i][j]) + tail;
        }
    }
    sums
}

/// One piece of 16 of [`tile_avx2`]: lanes 0–7 of each sum in `low`, 8–15
/// in `high`, `acc + x·y` (the multiply rounded, then the add).
///
/// # Safety
///
/// `p + 16` is at most the length of every slice, and the CPU has AVX2 and
/// F16C.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn piece_avx2<E: Element, const R: usize>(
    low: &mut [[std::arch::x86_64::__m256; RW_AVX2]; R],
    high: &mut [[std::arch::x86_64::__m256; RW_AVX2]; R],
    xs: [&[f32]; R],
    ys: [&[E]; RW_AVX2],
    p: usize,
) {
    use std::arch::x86_64::{__m256, _mm256_add_ps, _mm256_loadu_ps, _mm256_mul_ps};
    // SAFETY: the caller guarantees that 16 values from `p` are inside every
    // slice and that AVX2 and F16C are there; unaligned loads need no
    // alignment.
    unsafe {
        for (acc, q) in [(low, p), (high, p + LANES / 2)] {
            let y: [__m256; RW_AVX2] = std::array::from_fn(|j| super::half_f16c::load8(ys[j], q));
            for i in 0..R {
                let x = _mm256_loadu_ps(xs[i].as_ptr().add(q));
                for j in 0..RW_AVX2 {
                    acc[i][j] = _mm256_add_ps(acc[i][j], _mm256_mul_ps(x, y[j]));
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::tall_tile_fits;
    use half::f16;

    /// The shapes `tests/kernels.rs` runs through the tall tile take it (so
    /// its bits are tested there), and the others do not.
    #[test]
    fn the_tall_tile_is_taken_where_only_it_fits_in_l1() {
        assert!(tall_tile_fits::<f32>(8, 768)); // a batch of 8, GPT-2 small
        assert!(tall_tile_fits::<f32>(16, 420));
        assert!(!tall_tile_fits::<f16>(8, 768)); // 4 × 4 fits
        assert!(!tall_tile_fits::<f32>(8, 512)); // 4 × 4 fits
        assert!(!tall_tile_fits::<f32>(16, 770)); // neither fits
        assert!(!tall_tile_fits::<f32>(12, 600)); // not whole tall tiles
        assert!(!tall_tile_fits::<f32>(32, 100)); // 4 × 4 fits
    }
}
