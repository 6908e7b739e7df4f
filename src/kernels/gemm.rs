//! The fast matrix products behind [`matmul`](super::matmul) and
//! [`conv1d`](super::conv1d): a streaming matrix–vector kernel for a few
//! rows, a register-tiled kernel that reads the weights in place for a short
//! prompt, a packed SIMD GEMM for many rows.
//!
//! Why three: decoding multiplies **one** row by each weight matrix. That is
//! bound by memory bandwidth (every weight is read once per token), and a GEMM
//! library would first copy ("pack") the matrix into its own layout, reading
//! every weight twice and writing it once. The matrix–vector kernels below
//! read each weight exactly once, front to back, in the order it lies in
//! memory. With many rows (a long prompt) the product is bound by arithmetic
//! instead, and a packed GEMM with AVX-512 or AVX2/FMA micro-kernels chosen
//! at run time (the `gemm` crate, with its `x86-v4` kernels) is what we want. In between (5 to 32 rows: a short
//! prompt, a batch of decoding steps) each weight is still used only a few
//! times, so packing it costs as much as the arithmetic; a third kernel keeps
//! a 6 × 16 block of the output in registers (8 × 32 with AVX-512) and reads
//! the weights where they lie, eight rows at a time. The tied head of a
//! batch of decoding steps (4 to 32 rows times `wteᵀ`, whose columns are
//! contiguous) has a kernel of its own (`kernels/head.rs`): tiles of dot
//! products that read each row of `wte` once for every row of the batch.
//! Up to 4 rows times a `Conv1D` weight, the matrix–vector kernel loads each
//! vector of weights once for all the rows.
//!
//! The crate's own kernels here run at the SIMD level of [`super::simd`]
//! (AVX-512, AVX2 + FMA, AVX, portable/NEON); [`kernel_paths`] says which
//! each kernel uses on this machine.
//!
//! Every output element is computed by one thread, in an order that depends
//! on the shapes only — never on the number of threads or on how the work was
//! split — so results are bit-identical whatever the thread count.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::{Mutex, MutexGuard, TryLockError};

use ndarray::{s, Array2, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::convert::{widen, widen_lane, Element};
use super::fastmath::dot;
use super::simd::{self, prefetch_l2, prefetch_row, simd_targets, Simd};
use crate::weights::Stored;

/// Products with at most this many rows on the left use the matrix–vector
/// kernels (with a matrix of contiguous columns on the right, fewer than
/// [`HEAD_MIN_ROWS`] rows do).
pub const GEMV_MAX_ROWS: usize = 4;

/// Products with at most this many rows (and more than [`GEMV_MAX_ROWS`]) on
/// the left, and a contiguous row-major matrix on the right (a `Conv1D`
/// weight), use the register-tiled kernel (`few_rows`) where the CPU fuses
/// multiply–add.
pub const FEW_ROWS_MAX: usize = 32;

/// Products with at least [`HEAD_MIN_ROWS`] and at most this many rows on
/// the left and a matrix with contiguous columns on the right (`wteᵀ`, the
/// tied head of a batch of decoding steps) use the tiled dot products of
/// `kernels/head.rs`.
pub const HEAD_MAX_ROWS: usize = 32;

/// The fewest rows that take the head's tiled dot products (see
/// [`HEAD_MAX_ROWS`]); fewer take a dot product per column
/// (`gemv_columns`). From 4 rows, one whole tile of the AVX-512 kernel, two
/// of the AVX2 one: the head of 4 decoding sequences over GPT-2's `wte` took
/// 4.77–5.72 ms (best of 25) in tiles, 5.85–7.36 ms a column at a time
/// (AVX2: 4.60–5.21 and 5.66–6.09); at 2 and 3 rows the two were level
/// (AMD EPYC Zen 4, 2 threads, alternated).
pub const HEAD_MIN_ROWS: usize = 4;

/// Rows of `b` that one task of [`gemv_rows`] streams (a contiguous block of memory).
pub(crate) const GEMV_ROW_BLOCK: usize = 64;
/// Columns per task in [`gemv_columns`].
const GEMV_COLS: usize = 256;

/// Whether the product overwrites `c` or adds to what it holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Output {
    /// `c = a · b`.
    Overwrite,
    /// `c = c + a · b` (the bias of a linear layer, already in `c`).
    Accumulate,
}

impl Output {
    /// Put one finished sum `v` into its element of `c`.
    #[inline(always)]
    pub(super) fn store(self, c: &mut f32, v: f32) {
        match self {
            Output::Overwrite => *c = v,
            Output::Accumulate => *c += v,
        }
    }
}

/// Where a product runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Threads {
    /// Split over the current rayon pool.
    Pool,
    /// On the calling thread only: for products that are already one of many
    /// tasks running in parallel (a head of attention), where splitting each
    /// again would only add overhead. The result is the same either way.
    Caller,
}

/// `c = a · b` or `c += a · b`, on the current rayon pool. Shapes: `a: [m, k]`,
/// `b: [k, n]`, `c: [m, n]` (any strides).
pub fn matmul_into(a: ArrayView2<f32>, b: ArrayView2<f32>, c: ArrayViewMut2<f32>, output: Output) {
    product(a, b, c, output, Threads::Pool)
}

/// [`matmul_into`], choosing where it runs.
pub fn product(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    c: ArrayViewMut2<f32>,
    output: Output,
    threads: Threads,
) {
    product_of(a, b, c, output, threads)
}

/// `c = a · w` or `c += a · w` for a weight matrix as it is stored (`f32`,
/// `f16` or `bf16`, any strides: `w.t()` for the head), on the current rayon
/// pool. Half weights are widened to `f32` as the kernels read them (see
/// [`super::convert`]): the matrix–vector and few-rows kernels give the same
/// bits as with the `f32` upcast of `w`; the packed GEMM widens one panel of
/// columns at a time and may add in another order.
pub fn matmul_weight_into(
    a: ArrayView2<f32>,
    w: Stored<'_>,
    c: ArrayViewMut2<f32>,
    output: Output,
) {
    match w {
        Stored::F32(w) => product_of(a, w, c, output, Threads::Pool),
        Stored::F16(w) => product_of(a, w, c, output, Threads::Pool),
        Stored::BF16(w) => product_of(a, w, c, output, Threads::Pool),
    }
}

/// The dispatch of [`product`] for `b` stored as any [`Element`] type.
fn product_of<E: Element>(
    a: ArrayView2<f32>,
    b: ArrayView2<E>,
    mut c: ArrayViewMut2<f32>,
    output: Output,
    threads: Threads,
) {
    let ((m, k), n) = (a.dim(), b.ncols());
    assert_eq!(
        b.nrows(),
        k,
        "matmul: a is [{m}, {k}] but b is {:?}",
        b.dim()
    );
    assert_eq!(
        c.dim(),
        (m, n),
        "matmul: the output is {:?}, expected [{m}, {n}]",
        c.dim()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if output == Output::Overwrite {
            c.fill(0.0);
        }
        return;
    }
    if m <= GEMV_MAX_ROWS {
        if b.strides()[1] == 1 {
            return gemv_rows(a, b, c, output, threads);
        }
        if b.strides()[0] == 1 && m < HEAD_MIN_ROWS {
            return gemv_columns(a, b, c, output, threads);
        }
    }
    if m <= HEAD_MAX_ROWS && b.strides()[0] == 1 {
        return super::head::dot_tiles(a, b, c, output, threads);
    }
    let level = simd::level();
    if m <= FEW_ROWS_MAX && level.fuses_multiply_add() {
        if let Some(w) = b.as_slice() {
            #[cfg(target_arch = "x86_64")]
            if level == Simd::Avx512 {
                // SAFETY (both): the level is `Avx512` only on a CPU that was
                // detected to have AVX-512 F (see `simd::level`).
                let kernel = |p: &[f32], k, ks, w: &[f32], ldw, strips, t: &mut [[f32; 32]]| unsafe {
                    band_tiles_8x32(p, k, ks, w, ldw, strips, t)
                };
                let stored = |p: &[f32], k, ks, w: &[E], ldw, strips, t: &mut [[f32; 32]]| unsafe {
                    band_tiles_8x32(p, k, ks, w, ldw, strips, t)
                };
                return few_rows::<8, 32, E>(a, w, n, c, output, threads, kernel, Some(&stored));
            }
            if few_rows_tile(a.nrows()) == 4 {
                let kernel = band_tiles::<4>;
                return few_rows::<4, TILE_COLS, E>(a, w, n, c, output, threads, kernel, None);
            }
            return few_rows::<TILE_ROWS, TILE_COLS, E>(
                a,
                w,
                n,
                c,
                output,
                threads,
                band_tiles::<TILE_ROWS>,
                None,
            );
        }
    }
    match E::view_f32(b) {
        Some(b) => gemm(a, b, c.view_mut(), output, threads),
        None => gemm_panels(a, b, c, output, threads),
    }
}

/// Elements of `f32` in one panel that [`gemm_panels`] widens at a time
/// (16 MB): every weight of GPT-2 small's blocks (at most 768 × 3072 values)
/// is one panel, so its product is one call of the packed GEMM. In panels of
/// 2²⁰ values a `c_fc` product was three calls, each packing `a` again: with
/// `f16` weights a T=128 prompt then took 1.33–1.38× the `f32` time instead
/// of 1.14–1.16× (Intel Xeon, AVX-512, 2 threads, alternated in one process,
/// `docs/bench.md`). The tied head `wteᵀ` (38.6 M values) still goes in ten
/// panels.
const PANEL_ELEMENTS: usize = 1 << 22;

/// The panel [`gemm_panels`] last widened, kept for the next product:
/// [`PANEL_ELEMENTS`] `f32`s at most (or 16 columns of a matrix deeper than
/// 2¹⁸ rows). A fresh allocation of that size is a fresh mapping from the
/// system, each of whose pages faults on its first write: that cost more than
/// the widening itself (`f16` prefill at T=128, 1.14–1.16× the `f32` time
/// with a fresh buffer per product, 1.04–1.09× with a kept one; the same
/// machine as above). One buffer for the process, not one per thread: a
/// forward pass runs on whichever of the pool's threads picks it up, and a
/// buffer per thread kept one more 9 MB panel (GPT-2 small) for each thread
/// that ever ran a half-precision prompt.
static PANEL: Mutex<Vec<f32>> = Mutex::new(Vec::new());

/// The kept [`PANEL`], unless another thread holds it now. (Its contents are
/// scratch, overwritten before each use: a panic while it was held leaves
/// nothing to distrust.)
fn kept_panel() -> Option<MutexGuard<'static, Vec<f32>>> {
    match PANEL.try_lock() {
        Ok(kept) => Some(kept),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// [`gemm`] with a half-precision `b`: the columns of `b` in panels of at
/// most [`PANEL_ELEMENTS`] values, each widened to `f32` (rows in parallel)
/// into the kept [`PANEL`] and multiplied by the packed GEMM into its
/// columns of `c`. The panel keeps the layout of `b` (row-major for a
/// `Conv1D` weight, column-major for `wteᵀ`), so it is widened front to back.
fn gemm_panels<E: Element>(
    a: ArrayView2<f32>,
    b: ArrayView2<E>,
    mut c: ArrayViewMut2<f32>,
    output: Output,
    threads: Threads,
) {
    let (k, n) = b.dim();
    let width = (PANEL_ELEMENTS / k).max(16).min(n);
    let column_major = b.strides()[0] == 1 && b.strides()[1] != 1;
    // Taken out while in use (a product running at the same time, on another
    // thread, finds it empty or locked and allocates its own for this call),
    // put back at the end unless a larger one was put back meanwhile.
    let mut panel = kept_panel()
        .map(|mut kept| std::mem::take(&mut *kept))
        .unwrap_or_default();
    if panel.len() < k * width {
        panel = vec![0.0f32; k * width];
    }
    for j0 in (0..n).step_by(width) {
        let j1 = (j0 + width).min(n);
        let b_panel = b.slice(s![.., j0..j1]);
        let (lanes, stored) = if column_major {
            (b_panel.t(), &mut panel[..k * (j1 - j0)])
        } else {
            (b_panel.view(), &mut panel[..k * (j1 - j0)])
        };
        let lane_len = lanes.ncols();
        match threads {
            Threads::Pool => lanes
                .axis_iter(Axis(0))
                .into_par_iter()
                .zip(stored.par_chunks_exact_mut(lane_len))
                .with_min_len(16)
                .for_each(|(lane, out)| widen_lane(lane, out)),
            Threads::Caller => lanes
                .outer_iter()
                .zip(stored.chunks_exact_mut(lane_len))
                .for_each(|(lane, out)| widen_lane(lane, out)),
        }
        let stored = &panel[..k * (j1 - j0)];
        let b32 = if column_major {
            ArrayView2::from_shape((j1 - j0, k), stored)
                .expect("panel")
                .reversed_axes()
        } else {
            ArrayView2::from_shape((k, j1 - j0), stored).expect("panel")
        };
        gemm(a, b32, c.slice_mut(s![.., j0..j1]), output, threads);
    }
    if let Some(mut kept) = kept_panel() {
        if kept.len() < panel.len() {
            *kept = panel;
        }
    }
}

/// The instruction set each kernel runs with on this machine now, as
/// `(kernel, ISA)` pairs: the crate's own loops follow [`simd::level`]; the
/// `gemm` crate's packed GEMM detects its own.
pub fn kernel_paths() -> Vec<(&'static str, String)> {
    let level = simd::level();
    let few_rows = if !level.fuses_multiply_add() {
        "none (the GEMM takes these rows)".to_string()
    } else if level == Simd::Avx512 {
        format!("{level} (8 × 32 tile, intrinsics)")
    } else {
        format!("{level} (6 × 16 tile; 4 × 16 for 7, 8, 13–16, 19–20, 25–28, 31, 32 rows)")
    };
    vec![
        ("gemv (decoding, head)", level.to_string()),
        ("few rows (5–32)", few_rows),
        (
            "head, 4–32 rows (wteᵀ)",
            match level {
                Simd::Avx512 => format!(
                    "{level} (4 × 4 tile of dot products, intrinsics; 8 × 2 where only it fits in L1)"
                ),
                Simd::Avx2 => format!("{level} (2 × 2 tile of dot products, intrinsics)"),
                _ => format!("{level} (a dot product per column)"),
            },
        ),
        ("gemm crate (many rows)", gemm_crate_isa().to_string()),
        ("softmax, GELU, layer norm", level.to_string()),
    ]
}

/// The micro-kernels the `gemm` crate picks here (it asks the CPU itself;
/// this crate enables its `x86-v4` AVX-512 kernels).
fn gemm_crate_isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return "avx2+fma";
        }
        "scalar"
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar"
    }
}

/// Many rows: the `gemm` crate's packed GEMM, threaded over the current rayon
/// pool (it splits the output into blocks; each element's sum over `k` runs
/// in one thread in a fixed order, whatever the number of threads).
fn gemm(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    mut c: ArrayViewMut2<f32>,
    output: Output,
    threads: Threads,
) {
    // The crate takes any strides; a negative one (a reversed view) is copied
    // first so that every pointer below is the lowest address of its matrix.
    if a.strides().iter().any(|&s| s < 0) {
        return gemm(a.as_standard_layout().view(), b, c, output, threads);
    }
    if b.strides().iter().any(|&s| s < 0) {
        return gemm(a, b.as_standard_layout().view(), c, output, threads);
    }
    if c.strides().iter().any(|&s| s < 0) {
        let mut tmp = c.to_owned().as_standard_layout().into_owned();
        gemm(a, b, tmp.view_mut(), output, threads);
        return c.assign(&tmp);
    }
    let parallelism = match threads {
        Threads::Pool => gemm::Parallelism::Rayon(rayon::current_num_threads()),
        Threads::Caller => gemm::Parallelism::None,
    };
    let ((m, k), n) = (a.dim(), b.ncols());
    let (sa, sb, sc) = (a.strides(), b.strides(), c.strides());
    let (sa, sb, sc) = ([sa[0], sa[1]], [sb[0], sb[1]], [sc[0], sc[1]]);
    let dst = c.as_mut_ptr();
    // SAFETY: `gemm::gemm` reads `lhs[i·lhs_rs + l·lhs_cs]` for i < m, l < k,
    // `rhs[l·rhs_rs + j·rhs_cs]` for l < k, j < n, and writes (and with
    // `read_dst`, reads) `dst[i·dst_rs + j·dst_cs]` for i < m, j < n. Each
    // pointer and its pair of strides come from one ndarray view of exactly
    // those dimensions ([m, k], [k, n], [m, n]), and an ndarray view
    // guarantees that every such offset from its pointer is inside the
    // memory it borrows; the strides are non-negative (checked above), so
    // the pointers are the views' first elements. `c` is borrowed mutably
    // and `a`, `b` immutably for the whole call, so the output cannot
    // overlap either input (the crate requires it), and no one else
    // touches these elements meanwhile. The element type is `f32`, which the
    // crate supports (it panics otherwise; it does not misbehave). The call
    // returns only when every thread it started has finished.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            sc[1],
            sc[0],
            output == Output::Accumulate,
            a.as_ptr(),
            sa[1],
            sa[0],
            b.as_ptr(),
            sb[1],
            sb[0],
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Output rows held in registers by [`few_rows`] at once (AVX2, NEON; 8 with AVX-512).
const TILE_ROWS: usize = 6;
/// Output columns held in registers by [`few_rows`] at once: two 8-lane
/// vectors (32, two 16-lane vectors, with AVX-512).
const TILE_COLS: usize = 16;
/// Rows of the weight [`few_rows`] reads per step: eight 64-byte pieces that
/// stay in the L1 cache while every group of six output rows uses them.
const TILE_DEPTH: usize = 8;
/// A kernel of [`few_rows`] that reads the weights as stored (`f16`,
/// `bf16`), widening each piece in registers as it loads it (AVX-512's
/// [`band_tiles_8x32`]).
type StoredKernel<'k, E, const C: usize> =
    &'k (dyn Fn(&[f32], usize, Range<usize>, &[E], usize, usize, &mut [[f32; C]]) + Sync);

/// Columns of the output per task of [`few_rows`]: fixed, so that the split
/// does not depend on the thread count.
const FEW_ROWS_BAND: usize = 384;

/// Rows of a half weight [`few_rows`] widens at a time below AVX-512 (a
/// multiple of [`TILE_DEPTH`]): 16 × 384 `f32`s, 24 KB.
const HALF_DEPTH: usize = 16;
/// How far ahead (in rows) [`few_rows`] asks for a half weight it widens in
/// blocks: the widening otherwise waits on memory. (None before: GPT-2
/// small's blocks' products at 8 rows of `f16`, AVX2 level, took 35–36 ms;
/// with it 20–28; AMD EPYC Zen 4, 2 threads, alternated.)
const HALF_AHEAD: usize = 32;

/// `c (+)= a · w` for 5 to 32 rows of `a: [m, k]` and a row-major
/// `w: [k, n]` (given as its contiguous slice), read in place.
///
/// Each task owns a band of [`FEW_ROWS_BAND`] output columns. Its sums live
/// in tiles of `R` rows × `C` columns (6 × 16 in twelve AVX2 or NEON
/// registers, or 4 × 16 in eight where tiles of 6 would pad more rows, see
/// [`few_rows_tile`]; 8 × 32 in sixteen AVX-512 ones); the rows of `a` are first
/// laid out as panels `[m/R][k][R]` so that the `R` numbers one step needs
/// are adjacent.
/// For every 8 rows of `w` (`k0..k0+8`), each 16-column piece of those rows
/// comes from memory once and is then read from the L1 cache by every panel,
/// whose 6 × 16 sums stay in registers: per row of `w`, two vector loads, six
/// broadcasts and twelve fused multiply–adds. Reading the weight 8 rows × 16
/// columns at a time keeps its 8 rows' streams sequential for the hardware
/// prefetcher, and nothing is copied. A half weight is widened as it is
/// read: by the `stored` kernel where there is one (AVX-512's, in registers,
/// piece by piece), else in blocks of [`HALF_DEPTH`] rows that `kernel` then
/// reads like an `f32` weight.
///
/// Every output is one chain of fused multiply–adds over `k` in order,
/// started from zero and then written into (or added to) `c`: the same bits
/// whatever the thread count, on every CPU that runs it (`mul_add` rounds once).
#[allow(clippy::too_many_arguments)]
fn few_rows<const R: usize, const C: usize, E: Element>(
    a: ArrayView2<f32>,
    w: &[E],
    n: usize,
    mut c: ArrayViewMut2<f32>,
    output: Output,
    threads: Threads,
    kernel: impl Fn(&[f32], usize, Range<usize>, &[f32], usize, usize, &mut [[f32; C]]) + Sync,
    stored: Option<StoredKernel<'_, E, C>>,
) {
    let (m, k) = a.dim();
    debug_assert_eq!(w.len(), k * n);
    // Panels of R rows of `a`: panels[(g·k + l)·R + i] = a[Rg + i, l],
    // zero past the last row (those sums are computed and not stored).
    let groups = m.div_ceil(R);
    let mut panels = vec![0.0f32; groups * k * R];
    for (r, row) in a.rows().into_iter().enumerate() {
        let (g, i) = (r / R, r % R);
        let panel = &mut panels[g * k * R..(g + 1) * k * R];
        for (step, &x) in panel.chunks_exact_mut(R).zip(row) {
            step[i] = x;
        }
    }
    let band = |(j, mut c_band): (usize, ArrayViewMut2<f32>)| {
        let (j0, width) = (j * FEW_ROWS_BAND, c_band.ncols());
        let strips = width / C;
        let mut tiles = vec![[0.0f32; C]; groups * strips * R];
        // The last columns, fewer than a tile (all of them in a product as
        // narrow as attention's `q · kᵀ` over a dozen keys): copied into one
        // tile's width, zeros after them, and run through the same kernel —
        // each sum the same chain of fused multiply–adds as in a whole tile.
        // (A scalar `mul_add` here is a call to `fmaf` per step: this
        // function is not compiled for FMA. In a batch's prefill of 8
        // prompts of ~12 tokens those calls were 5% of the time.)
        let rest = width - strips * C;
        let mut rest_tiles = vec![[0.0f32; C]; if rest > 0 { groups * R } else { 0 }];
        if rest > 0 {
            let mut padded = vec![0.0f32; k * C];
            for (l, row) in padded.chunks_exact_mut(C).enumerate() {
                widen(&w[l * n + j0 + strips * C..][..rest], &mut row[..rest]);
            }
            kernel(&panels, k, 0..k, &padded, C, 1, &mut rest_tiles);
        }
        match (E::slice_f32(w), stored) {
            (Some(w), _) => kernel(&panels, k, 0..k, &w[j0..], n, strips, &mut tiles),
            (None, Some(stored)) => stored(&panels, k, 0..k, &w[j0..], n, strips, &mut tiles),
            (None, None) => {
                // Half weights, below AVX-512: widen HALF_DEPTH rows of the
                // band's tile columns at a time into a block that stays in
                // the L1 cache, and run the same kernel on it (the same steps
                // in the same order as on the f32 matrix: the same bits).
                let tiled = (strips * C).max(1);
                let mut block = vec![0.0f32; HALF_DEPTH * tiled];
                for k0 in (0..k).step_by(HALF_DEPTH) {
                    let depth = HALF_DEPTH.min(k - k0);
                    for (l, out) in block.chunks_exact_mut(tiled).take(depth).enumerate() {
                        let start = (k0 + l) * n + j0;
                        // The same columns HALF_AHEAD rows further down,
                        // asked for into the L2 cache while these are
                        // widened and multiplied.
                        prefetch_row(w, start + HALF_AHEAD * n, tiled);
                        widen(&w[start..][..tiled], out);
                    }
                    let ks = k0..k0 + depth;
                    kernel(&panels, k, ks, &block, tiled, strips, &mut tiles);
                }
            }
        }
        for (r, mut c_row) in c_band.rows_mut().into_iter().enumerate() {
            let (g, i) = (r / R, r % R);
            for s in 0..strips {
                let sums = &tiles[(g * strips + s) * R + i];
                let c_piece = c_row.slice_mut(s![s * C..(s + 1) * C]);
                c_piece
                    .into_iter()
                    .zip(sums)
                    .for_each(|(c, &v)| output.store(c, v));
            }
            if rest > 0 {
                let sums = &rest_tiles[g * R + i][..rest];
                c_row
                    .slice_mut(s![strips * C..])
                    .into_iter()
                    .zip(sums)
                    .for_each(|(c, &v)| output.store(c, v));
            }
        }
    };
    let bands = c.axis_chunks_iter_mut(Axis(1), FEW_ROWS_BAND);
    match threads {
        Threads::Pool => bands.into_par_iter().enumerate().for_each(band),
        Threads::Caller => bands.enumerate().for_each(band),
    }
}

simd_targets! {
    /// The loop of [`few_rows`] over one band, for the rows `ks` of the
    /// weights (`w` starts at row `ks.start`; the panels hold all `k`), in
    /// tiles of `R` rows: `tiles[(g·strips + s)·R + i]` receives
    /// `Σₗ a[Rg + i, l] · w[l, 16s..16s + 16]` (the band's columns; `w`
    /// starts at the band's first column, `ldw` apart per row). `R` is 6
    /// (twelve registers of sums), or 4 (eight) for the row counts that tiles
    /// of 6 would pad with more rows of zeros (see [`few_rows_tile`]; 8 rows
    /// as 6 + 6 waste a third of the arithmetic): the same chain of fused
    /// multiply–adds for every sum either way, so the same bits.
    fn band_tiles<const R: usize>(
        panels: &[f32],
        k: usize,
        ks: Range<usize>,
        w: &[f32],
        ldw: usize,
        strips: usize,
        tiles: &mut [[f32; TILE_COLS]],
    ) {
        band_rows::<R>(panels, k, ks, w, ldw, strips, tiles)
    }
}

/// Rows of `a` per tile of [`few_rows`] below AVX-512 for `m` rows: 6, or
/// 4 where tiles of 4 leave fewer padding rows (7, 8, 13–16, 19–20, 25–28,
/// 31 and 32 rows).
fn few_rows_tile(m: usize) -> usize {
    if m.div_ceil(4) * 4 < m.div_ceil(TILE_ROWS) * TILE_ROWS {
        4
    } else {
        TILE_ROWS
    }
}

/// The body of [`band_tiles`], for tiles of `R` rows.
#[inline(always)]
fn band_rows<const R: usize>(
    panels: &[f32],
    k: usize,
    ks: Range<usize>,
    w: &[f32],
    ldw: usize,
    strips: usize,
    tiles: &mut [[f32; TILE_COLS]],
) {
    let groups = panels.len() / (k * R);
    for k0 in ks.clone().step_by(TILE_DEPTH) {
        let depth = TILE_DEPTH.min(ks.end - k0);
        for s in 0..strips {
            let w_block = &w[(k0 - ks.start) * ldw + s * TILE_COLS..];
            for g in 0..groups {
                let steps = &panels[(g * k + k0) * R..][..depth * R];
                let tile = &mut tiles[(g * strips + s) * R..][..R];
                let tile: &mut [[f32; TILE_COLS]; R] = tile.try_into().expect("R rows");
                tile_steps(steps, w_block, ldw, tile);
            }
        }
    }
}

/// `tile[i][j] += Σₗ steps[l][i] · w[l·ldw + j]`, one fused multiply–add per
/// term, in order of `l`: the register tile of [`few_rows`] (inlined into the
/// SIMD versions of [`band_tiles`], where the 6 × 16 sums are twelve vector
/// registers).
#[inline(always)]
fn tile_steps<const R: usize>(
    steps: &[f32],
    w: &[f32],
    ldw: usize,
    tile: &mut [[f32; TILE_COLS]; R],
) {
    let mut acc = *tile;
    for (l, x) in steps.chunks_exact(R).enumerate() {
        let w_row: &[f32; TILE_COLS] = w[l * ldw..l * ldw + TILE_COLS]
            .try_into()
            .expect("TILE_COLS columns");
        for i in 0..R {
            for j in 0..TILE_COLS {
                acc[i][j] = x[i].mul_add(w_row[j], acc[i][j]);
            }
        }
    }
    *tile = acc;
}

/// [`band_tiles`] for AVX-512: tiles of 8 rows × 32 columns, the sums in
/// sixteen 16-lane registers; per row of `w`, two vector loads, eight
/// broadcasts and sixteen fused multiply–adds. Each sum is the same chain of
/// fused multiply–adds over `l`, in order, as in [`tile_steps`], so the
/// result has the same bits as the AVX2 and NEON versions.
///
/// `w` is read as stored: a half weight's two vectors a row are widened as
/// they are loaded ([`load16`](super::half_avx512::load16): `vcvtph2ps` for
/// `f16`, a shift for `bf16`; exact), and its rows ahead are prefetched as
/// an `f32` weight's are, so the weights stream from memory with the
/// arithmetic. (Widened first in blocks of [`HALF_DEPTH`] rows, as below
/// AVX-512, the widening waited on memory and the arithmetic then ran with
/// memory idle: GPT-2 small's blocks' products at 8 rows took 26–41 ms for
/// `f16`, 30–36 for `bf16`, against 13–24 and 11–20 read as stored, and
/// 15–25 for `f32`; AMD EPYC Zen 4, 2 threads, six alternations. Each row's
/// pieces are held as `&[E; 32]`: as slices, with their lengths, the `f32`
/// products ran 9–25% slower in four alternations.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn band_tiles_8x32<E: Element>(
    panels: &[f32],
    k: usize,
    ks: Range<usize>,
    w: &[E],
    ldw: usize,
    strips: usize,
    tiles: &mut [[f32; 32]],
) {
    use super::half_avx512::load16;
    use std::arch::x86_64::_mm512_storeu_ps;
    use std::arch::x86_64::{__m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps};
    const R: usize = 8;
    /// How far ahead (in rows of `w`) the weights are prefetched, into the
    /// L2 cache, as in `kernels/head.rs` (`PREFETCH_TILES`). (16 rows into the L1 cache, as
    /// before: the blocks' products at B = 8 took 16.1–21.3 ms, best of
    /// three, five runs alternated; 32 rows into the L2 cache 14.3–20.0 ms;
    /// GPT-2 small, AMD EPYC Zen 4, 2 threads.)
    const PREFETCH_ROWS: usize = 32;
    let groups = panels.len() / (k * R);
    for k0 in ks.clone().step_by(TILE_DEPTH) {
        let depth = TILE_DEPTH.min(ks.end - k0);
        for s in 0..strips {
            let w_block = &w[(k0 - ks.start) * ldw + s * 32..];
            // The 32 weights of each of the `depth` rows, bounds-checked once
            // per block here rather than per load below.
            let w_rows: [&[E; 32]; TILE_DEPTH] = std::array::from_fn(|l| {
                let l = l.min(depth - 1);
                w_block[l * ldw..l * ldw + 32]
                    .try_into()
                    .expect("32 columns")
            });
            // Ask for this strip's rows PREFETCH_ROWS further down while
            // these are multiplied: the weights stream from memory with the
            // arithmetic instead of between it. (A hint: it never faults,
            // and past the end of `w` it fetches nothing useful.)
            for l in 0..TILE_DEPTH {
                let ahead = w_block.as_ptr().wrapping_add((PREFETCH_ROWS + l) * ldw);
                prefetch_l2(ahead);
                prefetch_l2(ahead.wrapping_add(16));
            }
            for g in 0..groups {
                let steps = &panels[(g * k + k0) * R..][..depth * R];
                let tile = &mut tiles[(g * strips + s) * R..][..R];
                // SAFETY: every pointer below is the start of a `[f32; 32]`
                // (a row of `tile`), read or written at offsets 0 and 16 as
                // 16 `f32`s: inside the array; each row of `w_rows` is 32
                // values, read at 0 and 16 as 16 (`load16`'s condition).
                // Unaligned loads and stores (`loadu`, `storeu`) need no
                // alignment. The caller runs this only where AVX-512 F was
                // detected.
                unsafe {
                    let mut acc: [[__m512; 2]; R] = std::array::from_fn(|i| {
                        let p = tile[i].as_ptr();
                        [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))]
                    });
                    for (l, x) in steps.chunks_exact(R).enumerate() {
                        let row = w_rows[l].as_slice();
                        let (w0, w1) = (load16(row, 0), load16(row, 16));
                        for i in 0..R {
                            let xi = _mm512_set1_ps(x[i]);
                            acc[i][0] = _mm512_fmadd_ps(xi, w0, acc[i][0]);
                            acc[i][1] = _mm512_fmadd_ps(xi, w1, acc[i][1]);
                        }
                    }
                    for (row, [a0, a1]) in tile.iter_mut().zip(acc) {
                        let p = row.as_mut_ptr();
                        _mm512_storeu_ps(p, a0);
                        _mm512_storeu_ps(p.add(16), a1);
                    }
                }
            }
        }
    }
}

/// A few rows times a matrix whose rows are contiguous (a `Conv1D` weight
/// `[in, out]`, as it lies in the checkpoint): `cₜ = Σᵢ aₜᵢ · bᵢ`, adding
/// whole rows of `b`, each scaled by one number.
///
/// The rows of `b` are cut into blocks of [`GEMV_ROW_BLOCK`]: each task reads
/// its block front to back (one contiguous stretch of memory, which is what
/// the hardware prefetcher streams best; on x86 the passes also ask for the
/// rows [`GEMV_PREFETCH_ROWS`] ahead) into partial sums of its own, and the
/// partial sums are added in a fixed tree ([`tree_sum`]). The blocks and the
/// tree depend on `k` only, so the result does not depend on the number of
/// threads. On x86 (AVX2 or
/// AVX-512) each vector of weights is loaded once for all the rows of `a`,
/// each row's sums the arithmetic it gets alone (the same bits), so that a
/// decoding step of 2–4 sequences goes over the weights once, not once per
/// sequence (GPT-2 small, 4 sequences: 24.4–30.0 ms a step instead of
/// 30.4–35.7; one sequence 16.1–19.5 ms either way; AMD EPYC Zen 4, 2
/// threads, alternated three times).
fn gemv_rows<E: Element>(
    a: ArrayView2<f32>,
    b: ArrayView2<E>,
    mut c: ArrayViewMut2<f32>,
    output: Output,
    threads: Threads,
) {
    let ((m, k), n) = (a.dim(), b.ncols());
    // Each row of `a` as one slice (a copy only if its values are not
    // contiguous), once for every block.
    let inputs: Vec<Cow<[f32]>> = a
        .rows()
        .into_iter()
        .map(|x| {
            x.to_slice()
                .map_or_else(|| Cow::Owned(x.to_vec()), Cow::Borrowed)
        })
        .collect();
    let block_sum = |(block, b_rows): (usize, ArrayView2<E>)| {
        let i0 = block * GEMV_ROW_BLOCK;
        let xs: Vec<&[f32]> = inputs.iter().map(|x| &x[i0..i0 + b_rows.nrows()]).collect();
        let mut acc = Array2::zeros((m, n));
        add_scaled_rows_any(acc.as_slice_mut().expect("fresh array"), b_rows, &xs);
        acc
    };
    let blocks: Vec<ArrayView2<E>> = b.axis_chunks_iter(Axis(0), GEMV_ROW_BLOCK).collect();
    debug_assert_eq!(blocks.len(), k.div_ceil(GEMV_ROW_BLOCK));
    let sum = tree_sum(0, &blocks, &block_sum, threads);
    match output {
        Output::Overwrite => c.assign(&sum),
        Output::Accumulate => c += &sum,
    }
}

/// Where [`tree_sum`] splits `len > 1` blocks: the first `len / 2`, then the rest.
fn tree_split(len: usize) -> usize {
    len / 2
}

/// One step of [`tree_sum`]'s additions run by one thread over a stack of
/// partial sums (see [`tree_steps`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TreeStep {
    /// Sum the next block from zero and push it.
    Block,
    /// Pop the top sum and add it to the one below: `below + top`.
    Add,
}

/// [`tree_sum`]'s tree over `len` blocks in the order one thread can run it
/// (the blocks in order, each addition once both its sums are there), for
/// kernels that must give its bits without its tasks (the attention of one
/// query). Its stack of sums is at most `⌈log₂ len⌉ + 1` deep.
pub(super) fn tree_steps(len: usize, steps: &mut Vec<TreeStep>) {
    if len <= 1 {
        steps.extend((len == 1).then_some(TreeStep::Block));
        return;
    }
    let mid = tree_split(len);
    tree_steps(mid, steps);
    tree_steps(len - mid, steps);
    steps.push(TreeStep::Add);
}

/// The sum of `part(i0 + i, blocks[i])` over the blocks (at least one),
/// added in a fixed tree: the front's sum plus the back's, each summed the
/// same way, split by [`tree_split`]. The tree depends on the number of
/// blocks only, so the bits do not depend on the thread count; with
/// [`Threads::Pool`] the two
/// halves run as two rayon tasks (`join`), and each addition is done inside
/// them, as soon as both of its halves are summed, while the other threads
/// go on streaming weights (the sums added one after the other at
/// the end, as before, left every thread but one idle meanwhile). A
/// decoding step of f16 GPT-2 small (the median of 256–384 steps at 128
/// cached positions; AMD EPYC Zen 4, 2 threads) was faster in 13 of 17
/// alternations of the two binaries, 9.56 against 9.92 ms on average: 3.6%,
/// about the host's noise from one run to the next.
fn tree_sum<'a, E: Element>(
    i0: usize,
    blocks: &[ArrayView2<'a, E>],
    part: &(impl Fn((usize, ArrayView2<'a, E>)) -> Array2<f32> + Sync),
    threads: Threads,
) -> Array2<f32> {
    if let [block] = blocks {
        return part((i0, *block));
    }
    let mid = tree_split(blocks.len());
    let (front, back) = blocks.split_at(mid);
    let (mut front, back) = match threads {
        Threads::Pool => rayon::join(
            || tree_sum(i0, front, part, threads),
            || tree_sum(i0 + mid, back, part, threads),
        ),
        Threads::Caller => (
            tree_sum(i0, front, part, threads),
            tree_sum(i0 + mid, back, part, threads),
        ),
    };
    front += &back;
    front
}

/// Rows of weights that [`add_scaled_rows`] adds in one pass over wide sums
/// (and that the x86 passes read at once over narrow ones).
const ROWS_PER_PASS: usize = 8;
/// Sums at most this wide get the arithmetic of one row of weights per pass
/// (see [`add_scaled_rows`]).
const NARROW: usize = 1024;

simd_targets! {
    /// `acc += Σᵢ xᵢ · rows[i]`, in passes over `acc` (which stays in the L1
    /// cache) while the rows of weights stream from memory.
    ///
    /// How many rows one pass adds depends on the width of `acc` only (so
    /// never on the thread count or the SIMD level), and was measured on
    /// GPT-2's shapes (`examples/bench.rs --case decode-profile`): rows of
    /// at most [`NARROW`] weights (`attn.c_proj`, `mlp.c_proj`: 3 KB) are
    /// added one at a time, each `acc + x·w` (the x86 passes read
    /// [`NARROW_ROWS_PER_PASS`] rows of `f32` weights at once with this
    /// arithmetic, two vectors of columns a step, each sum loaded and stored
    /// once for all of them: one long narrow product, eight rows at once,
    /// read 0.75–0.77 of the bandwidth reading instead of 0.67–0.69 a row at
    /// a time, and sixteen rows two vectors a step read more again (see
    /// there); rows of half-precision weights, 1.5 KB, read 0.83–0.89 one at
    /// a time and 0.74–0.81 eight at once, so they are read one at a time;
    /// the host's fast level, AMD EPYC Zen 4, AVX-512, 2 threads,
    /// alternated); wider rows (`c_attn`, `c_fc`: 9–12 KB, where a pass per
    /// row would move as many bytes of `acc` through the L1 cache as of
    /// weights) [`ROWS_PER_PASS`] at a time, each pass
    /// `acc + (x₀w₀ + x₁w₁ + … + x₇w₇)` (the x86 passes over `f32` weights
    /// two vectors of columns a step: see [`add_scaled_rows_of`]).
    fn add_scaled_rows<E: Element>(acc: &mut [f32], rows: ArrayView2<E>, xs: &[f32]) {
        if acc.len() <= NARROW {
            scaled_row_passes::<1, E>(acc, rows, xs)
        } else {
            scaled_row_passes::<ROWS_PER_PASS, E>(acc, rows, xs)
        }
    }
}

/// [`add_scaled_rows`] for the sums of every row of a product of 1 to
/// [`GEMV_MAX_ROWS`] rows (`acc` holds them one after the other, `xs` their
/// inputs).
fn add_scaled_rows_any<E: Element>(acc: &mut [f32], rows: ArrayView2<E>, xs: &[&[f32]]) {
    const { assert!(GEMV_MAX_ROWS == 4, "one arm below per row count") };
    match *xs {
        [x] => add_scaled_rows_of::<1, E>(acc, rows, [x]),
        [x, y] => add_scaled_rows_of::<2, E>(acc, rows, [x, y]),
        [x, y, z] => add_scaled_rows_of::<3, E>(acc, rows, [x, y, z]),
        [x, y, z, w] => add_scaled_rows_of::<4, E>(acc, rows, [x, y, z, w]),
        _ => unreachable!("the matrix-vector kernel takes 1 to GEMV_MAX_ROWS rows"),
    }
}

/// [`add_scaled_rows`] for `M` sums (one after the other in `acc`): on x86
/// its AVX-512 or AVX2 twin, which reads each vector of weights once for
/// all `M` sums (the same arithmetic for each sum, the weights widened as
/// they are loaded, with the hardware conversion for `f16`, and the rows
/// ahead asked for: see [`GEMV_PREFETCH_ROWS`]); elsewhere the generic loop,
/// one sum after the other.
fn add_scaled_rows_of<const M: usize, E: Element>(
    acc: &mut [f32],
    rows: ArrayView2<E>,
    xs: [&[f32]; M],
) {
    let n = rows.ncols();
    #[cfg(target_arch = "x86_64")]
    {
        use super::{half_avx512, half_f16c};
        const R: usize = ROWS_PER_PASS;
        // Which passes read these rows (`$level` is the level's module): see
        // `add_scaled_rows` and `NARROW_PREFETCH_ROWS`. Rows of `f32` weights
        // are read two vectors of columns a step (`PAIRS`), half ones one: in
        // the wide passes, one thread, `bench --case decode-profile`, ten
        // alternations of the binaries with one vector and with two (AMD
        // EPYC Zen 4, AVX-512, 2026-12-05), `f32` the step 0.853–0.872 →
        // 0.863–0.880 of the reading (faster in eight of ten), `c_attn` 0.86
        // → 0.88 (medians), `c_fc` level; `f16` `c_attn` 0.83–0.87 →
        // 0.79–0.83 and `c_fc` 0.82–0.86 → 0.78–0.80 (five alternations).
        macro_rules! passes {
            ($level:ident) => {
                match (n <= NARROW, std::mem::size_of::<E>() == 4) {
                    (true, true) => $level::scaled_row_passes::<
                        NARROW_ROWS_PER_PASS,
                        true,
                        true,
                        M,
                        E,
                    >(acc, rows, xs, NARROW_PREFETCH_ROWS),
                    (true, false) => $level::scaled_row_passes::<1, false, false, M, E>(
                        acc,
                        rows,
                        xs,
                        GEMV_PREFETCH_ROWS,
                    ),
                    (false, true) => $level::scaled_row_passes::<R, false, true, M, E>(
                        acc,
                        rows,
                        xs,
                        GEMV_PREFETCH_ROWS,
                    ),
                    (false, false) => $level::scaled_row_passes::<R, false, false, M, E>(
                        acc,
                        rows,
                        xs,
                        GEMV_PREFETCH_ROWS,
                    ),
                }
            };
        }
        match simd::level() {
            // SAFETY: the level is `Avx512` only on a CPU that was detected
            // to have AVX-512 F (`simd::level`).
            Simd::Avx512 => unsafe { return passes!(half_avx512) },
            // SAFETY: the level is `Avx2` only on a CPU that was detected to
            // have AVX2 and F16C (`simd::level`).
            Simd::Avx2 => unsafe { return passes!(half_f16c) },
            _ => {}
        }
    }
    for (acc, x) in acc.chunks_exact_mut(n.max(1)).zip(xs) {
        add_scaled_rows(acc, rows, x);
    }
}

/// How far ahead (in rows of weights) the AVX-512 and AVX2 passes of
/// [`add_scaled_rows_any`] over wide rows ask for the rows they will read,
/// into the L2 cache: one pass of [`ROWS_PER_PASS`] ahead (72–96 KB of
/// GPT-2's `f32` weights). The hardware prefetcher alone left each core's
/// stream of weights short of what the memory gives.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86 passes only
pub(super) const GEMV_PREFETCH_ROWS: usize = 8;

/// Rows of `f32` weights that the x86 passes over narrow rows (at most
/// [`NARROW`]) read at once, with the arithmetic of one row a pass, two
/// vectors of columns a step (each row's two cache lines read back to
/// back). The passes re-written outside the crate, over one long narrow
/// product in 64-row blocks (`f32`, rows of 768, a 2 MB-page map), as a
/// fraction of a plain sum of the same bytes, one thread: 8 rows one vector
/// a step (the passes until 2026-12-05) 0.74–0.79, 8 rows two vectors 0.80,
/// 16 rows one vector 0.81, **16 rows two vectors 0.83–0.84**, 16 rows four
/// vectors 0.77, 32 rows two vectors 0.72; two threads at the host's fast
/// level (65 GB/s), 0.75 (8 rows) against 0.85 (16, two vectors). In the
/// crate (`bench --case decode-profile`, old and new alternated), one
/// thread: `mlp.c_proj` 0.74–0.76 → 0.78–0.82 of the reading, a whole step
/// 0.813–0.817 → 0.832–0.837. AMD EPYC Zen 4, AVX-512.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86 passes only
const NARROW_ROWS_PER_PASS: usize = 16;

/// How far ahead the passes over narrow rows of `f32` weights ask for the
/// rows they will read: 24 rows (72 KB of GPT-2's weights), a pass and a
/// half of [`NARROW_ROWS_PER_PASS`]. With 16 rows a pass, one thread's long
/// narrow product read 0.79–0.80 of its plain sum asking 16 rows ahead,
/// 0.83–0.84 at 24, 0.82 at 32 (as above). Narrow rows of half-precision
/// weights, read one at a time, ask [`GEMV_PREFETCH_ROWS`] ahead.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86 passes only
pub(super) const NARROW_PREFETCH_ROWS: usize = 24;

/// For a pass at column `j` over `R` rows of `rows` from row `first`: ask
/// for the cache line at column `j` of rows `first..first + R`, once a line
/// (nothing for a `j` inside a line already asked for). Rows past the end
/// are asked for too: a hint, never a fault.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // called by the x86 passes only
pub(super) fn prefetch_rows<const R: usize, E>(rows: &ArrayView2<E>, first: usize, j: usize) {
    let line = (64 / std::mem::size_of::<E>().max(1)).max(1); // values in a cache line
    if j.is_multiple_of(line) {
        let stride = rows.strides()[0];
        let ahead = rows.as_ptr().wrapping_offset(first as isize * stride);
        for r in 0..R {
            prefetch_l2(ahead.wrapping_offset(r as isize * stride + j as isize));
        }
    }
}

/// Defines `scaled_row_passes::<R, CHAINED, PAIRS, M, E>` for one x86 SIMD level
/// (used by `half_avx512.rs` and `half_f16c.rs`, each with its own vector
/// type and intrinsics): the passes of [`scaled_row_passes`] for `M` sums at
/// once (`acc` holds them one after the other, `xs` their inputs): each
/// `acc[t] += Σᵢ xs[t][i] · rows[i]`, `R` rows per pass, each pass
/// `acc[t] + (x₀w₀ + x₁w₁ + …)`, or with `CHAINED` the arithmetic of one
/// row a pass, `acc[t] + x₀w₀ + x₁w₁ + …` (each addition rounded in turn)
/// with one load and one store of the sums a pass instead of `R`; with
/// `PAIRS` two vectors of columns a step, then one (each row's two vectors
/// read back to back; the chained passes address every row from the pass's
/// first: [`NARROW_ROWS_PER_PASS`]); the last
/// rows one by one, `acc[t] + xᵢwᵢ`; the weights of any stored type widened
/// as they are loaded (`$load`), once for all `M` sums, each sum getting
/// the arithmetic it gets alone. Each cache line of a pass's rows is first
/// asked for `ahead` rows ahead, into the L2 cache.
#[cfg(target_arch = "x86_64")]
macro_rules! x86_scaled_row_passes {
    (
        target_feature = $feature:literal,
        lanes = $w:expr,
        vector = $vec:ty,
        set1 = $set1:ident,
        mul = $mul:ident,
        add = $add:ident,
        load = $load:ident,
        loadu = $loadu:ident,
        storeu = $storeu:ident $(,)?
    ) => {
        /// The passes of `gemm::scaled_row_passes` for `M` sums at once, at
        /// this file's SIMD level: see `gemm::x86_scaled_row_passes`.
        #[target_feature(enable = $feature)]
        pub(super) fn scaled_row_passes<
            const R: usize,
            const CHAINED: bool,
            const PAIRS: bool,
            const M: usize,
            E: Element,
        >(
            acc: &mut [f32],
            rows: ArrayView2<E>,
            xs: [&[f32]; M],
            ahead: usize,
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
            let vectors = n / $w * $w;
            let mut i = 0;
            while i + R <= k {
                let x: [[f32; R]; M] =
                    std::array::from_fn(|t| std::array::from_fn(|r| xs[t][i + r]));
                let xv: [[$vec; R]; M] =
                    std::array::from_fn(|t| std::array::from_fn(|r| $set1(x[t][r])));
                // Chained passes in pairs of vectors, every row addressed
                // from the pass's first (see `NARROW_ROWS_PER_PASS`).
                let mut j = 0;
                if CHAINED && PAIRS {
                    let stride = rows.strides()[0];
                    let first = rows.as_ptr().wrapping_offset(i as isize * stride);
                    while j + 2 * $w <= vectors {
                        // SAFETY: rows i..i + R each have n values from
                        // `first` + r·stride, so with j + 2·lanes <= n each
                        // `pair` lies inside its row; acc has M·n (asserted
                        // above); the target features of this function are
                        // enabled.
                        unsafe {
                            let y: [*mut f32; M] =
                                std::array::from_fn(|t| acc.as_mut_ptr().add(t * n + j));
                            let mut sums: [[$vec; 2]; M] =
                                std::array::from_fn(|t| [$loadu(y[t]), $loadu(y[t].add($w))]);
                            for r in 0..R {
                                let p = first.offset(r as isize * stride).add(j);
                                // Asked for once a cache line.
                                let later = p.wrapping_offset(ahead as isize * stride);
                                for line in (0..2 * $w).step_by(64 / std::mem::size_of::<E>()) {
                                    super::simd::prefetch_l2(later.wrapping_add(line));
                                }
                                let pair = std::slice::from_raw_parts(p, 2 * $w);
                                let (w0, w1) = ($load(pair, 0), $load(pair, $w));
                                for (sum, xv) in sums.iter_mut().zip(&xv) {
                                    sum[0] = $add(sum[0], $mul(xv[r], w0));
                                    sum[1] = $add(sum[1], $mul(xv[r], w1));
                                }
                            }
                            for (y, sum) in y.into_iter().zip(sums) {
                                $storeu(y, sum[0]);
                                $storeu(y.add($w), sum[1]);
                            }
                        }
                        j += 2 * $w;
                    }
                }
                // The columns left: in passes of separate sums in pairs of
                // vectors, then one vector a step, then one at a time.
                if j < n {
                    let w: [&[E]; R] = std::array::from_fn(|r| row(i + r));
                    while !CHAINED && PAIRS && j + 2 * $w <= vectors {
                        super::gemm::prefetch_rows::<R, E>(&rows, i + ahead, j);
                        super::gemm::prefetch_rows::<R, E>(&rows, i + ahead, j + $w);
                        // SAFETY: every row has n values, acc has M·n (asserted
                        // above), and j + 2·lanes <= n; the target features of
                        // this function are enabled.
                        unsafe {
                            let wv: [[$vec; 2]; R] =
                                std::array::from_fn(|r| [$load(w[r], j), $load(w[r], j + $w)]);
                            for (t, xv) in xv.iter().enumerate() {
                                let y = acc.as_mut_ptr().add(t * n + j);
                                let mut s = [$mul(xv[0], wv[0][0]), $mul(xv[0], wv[0][1])];
                                for r in 1..R {
                                    s[0] = $add(s[0], $mul(xv[r], wv[r][0]));
                                    s[1] = $add(s[1], $mul(xv[r], wv[r][1]));
                                }
                                $storeu(y, $add($loadu(y), s[0]));
                                $storeu(y.add($w), $add($loadu(y.add($w)), s[1]));
                            }
                        }
                        j += 2 * $w;
                    }
                    for j in (j..vectors).step_by($w) {
                        super::gemm::prefetch_rows::<R, E>(&rows, i + ahead, j);
                        // SAFETY: every row has n values, acc has M·n (asserted
                        // above), and j + lanes <= n; the target features of
                        // this function are enabled.
                        unsafe {
                            let wv: [$vec; R] = std::array::from_fn(|r| $load(w[r], j));
                            for (t, xv) in xv.iter().enumerate() {
                                let y = acc.as_mut_ptr().add(t * n + j);
                                let sum = if CHAINED {
                                    let mut sum = $loadu(y);
                                    for r in 0..R {
                                        sum = $add(sum, $mul(xv[r], wv[r]));
                                    }
                                    sum
                                } else {
                                    let mut s = $mul(xv[0], wv[0]);
                                    for r in 1..R {
                                        s = $add(s, $mul(xv[r], wv[r]));
                                    }
                                    $add($loadu(y), s)
                                };
                                $storeu(y, sum);
                            }
                        }
                    }
                    for (x, acc) in x.iter().zip(acc.chunks_exact_mut(n)) {
                        for (j, y) in acc.iter_mut().enumerate().skip(vectors) {
                            if CHAINED {
                                for r in 0..R {
                                    *y += x[r] * w[r][j].to_f32();
                                }
                            } else {
                                let mut s = x[0] * w[0][j].to_f32();
                                for r in 1..R {
                                    s += x[r] * w[r][j].to_f32();
                                }
                                *y += s;
                            }
                        }
                    }
                }
                i += R;
            }
            for (i, w) in rows.rows().into_iter().enumerate().skip(i) {
                let w = w.to_slice().expect("unit column stride");
                let x: [f32; M] = std::array::from_fn(|t| xs[t][i]);
                let xv: [$vec; M] = std::array::from_fn(|t| $set1(x[t]));
                for j in (0..vectors).step_by($w) {
                    // SAFETY: as above.
                    unsafe {
                        let wv = $load(w, j);
                        for (t, &xv) in xv.iter().enumerate() {
                            let y = acc.as_mut_ptr().add(t * n + j);
                            $storeu(y, $add($loadu(y), $mul(xv, wv)));
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
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use x86_scaled_row_passes;

/// The passes of [`add_scaled_rows`], `R` rows each (the last rows one by one).
#[inline(always)]
fn scaled_row_passes<const R: usize, E: Element>(acc: &mut [f32], rows: ArrayView2<E>, xs: &[f32]) {
    let row = |i: usize| rows.row(i).to_slice().expect("unit column stride");
    let k = rows.nrows();
    let mut i = 0;
    while i + R <= k {
        let w: [&[E]; R] = std::array::from_fn(|r| row(i + r));
        let x: [f32; R] = std::array::from_fn(|r| xs[i + r]);
        for (j, y) in acc.iter_mut().enumerate() {
            let mut s = x[0] * w[0][j].to_f32();
            for r in 1..R {
                s += x[r] * w[r][j].to_f32();
            }
            *y += s;
        }
        i += R;
    }
    for (i, &xi) in xs.iter().enumerate().skip(i) {
        for (y, &w) in acc.iter_mut().zip(row(i)) {
            *y += xi * w.to_f32();
        }
    }
}

simd_targets! {
    /// `c[t, j] (+)= rows[t] · b[:, j]` for one band of columns of `b`, each
    /// column contiguous: the dot products of [`gemv_columns`], in one loop
    /// compiled for the CPU's widest vectors (also the band of the batch
    /// head, `kernels/head.rs`, below AVX-512).
    pub(super) fn dot_columns<E: Element>(
        rows: &[&[f32]],
        b_band: ArrayView2<E>,
        c_band: ArrayViewMut2<f32>,
        output: Output,
    ) {
        let mut c_band = c_band;
        for (j, column) in b_band.columns().into_iter().enumerate() {
            let column = column.to_slice().expect("unit row stride");
            for (t, row) in rows.iter().enumerate() {
                output.store(&mut c_band[[t, j]], dot(row, column));
            }
        }
    }
}

/// [`dot_columns`] on x86 with AVX-512 or AVX2: the level's own dot product
/// (`half_avx512::dot` or `half_f16c::dot`: the same arithmetic, the lanes
/// folded in registers, `f16` widened by the hardware, `bf16` by a shift),
/// for columns of any stored type, inlined into the level's own loop over
/// the columns (`half_avx512::dot_columns`, `half_f16c::dot_columns`);
/// `None` below AVX2. Until 9bca723 only `f16` columns took it: the head of
/// `bf16` weights, then in the portable loop, now reads 15–25% faster at the
/// host's fast level, that of `f32` weights no faster or slower measurably
/// (`docs/bench.md`, "Huge pages"). Called through a pointer per column, as
/// it was until the loop was the level's own, and over rayon's adaptive
/// split of the bands, the `f32` head of one row read 0.87–0.91 of the
/// bandwidth reading at the host's fast level; inlined and over
/// [`split_bands`], 0.92–0.96 (AMD EPYC Zen 4, 2 threads, alternated).
#[cfg(target_arch = "x86_64")]
fn dot_columns_x86<E: Element>(
    rows: &[&[f32]],
    b_band: ArrayView2<E>,
    c_band: ArrayViewMut2<f32>,
    output: Output,
) -> Option<()> {
    match simd::level() {
        // SAFETY: the level is `Avx512` only on a CPU that was detected to
        // have AVX-512 F (`simd::level`).
        Simd::Avx512 => unsafe { super::half_avx512::dot_columns(rows, b_band, c_band, output) },
        // SAFETY: the level is `Avx2` only on a CPU that was detected to
        // have AVX2 and F16C (`simd::level`).
        Simd::Avx2 => unsafe { super::half_f16c::dot_columns(rows, b_band, c_band, output) },
        _ => return None,
    }
    Some(())
}

/// The loop of [`dot_columns`] with a given dot product: `c[t, j] (+)=
/// dot(rows[t], b[:, j])`, for each level's copy to inline its own `dot`
/// into (`half_avx512::dot_columns`, `half_f16c::dot_columns`).
#[inline(always)]
#[cfg(target_arch = "x86_64")]
pub(super) fn dot_columns_by<E: Element>(
    rows: &[&[f32]],
    b_band: ArrayView2<E>,
    mut c_band: ArrayViewMut2<f32>,
    output: Output,
    dot: impl Fn(&[f32], &[E]) -> f32,
) {
    // The band's columns one after the other in memory (`wteᵀ`'s are: its
    // transpose is in standard layout), sliced from one slice without an
    // iterator of views.
    let transposed = b_band.t();
    match transposed.to_slice() {
        Some(columns) => {
            for (j, column) in columns.chunks_exact(b_band.nrows().max(1)).enumerate() {
                for (t, row) in rows.iter().enumerate() {
                    output.store(&mut c_band[[t, j]], dot(row, column));
                }
            }
        }
        None => {
            for (column, mut c) in b_band.columns().into_iter().zip(c_band.columns_mut()) {
                let column = column.to_slice().expect("unit row stride");
                for (row, c) in rows.iter().zip(&mut c) {
                    output.store(c, dot(row, column));
                }
            }
        }
    }
}

/// A few rows times a matrix whose columns are contiguous (`wteᵀ`, or `kᵀ`
/// in attention): `cₜⱼ (+)= aₜ · b₍:,ⱼ₎`, one dot product per output, each
/// column of `b` read once for all rows.
fn gemv_columns<E: Element>(
    a: ArrayView2<f32>,
    b: ArrayView2<E>,
    c: ArrayViewMut2<f32>,
    output: Output,
    threads: Threads,
) {
    by_column_bands(a, b, c, GEMV_COLS, threads, |rows, b_band, mut c_band| {
        #[cfg(target_arch = "x86_64")]
        if dot_columns_x86(rows, b_band, c_band.view_mut(), output).is_some() {
            return;
        }
        dot_columns(rows, b_band, c_band, output);
    });
}

/// The frame of a product whose right matrix has contiguous columns
/// ([`gemv_columns`], and the batch head's `head::dot_tiles`): the rows of
/// `a` as slices, `b` and `c` split into bands of `width` columns (fixed, so
/// the split does not depend on the thread count), and `band(rows, b_band,
/// c_band)` run on each band — in parallel on the pool ([`split_bands`]), or
/// on the caller.
pub(super) fn by_column_bands<E: Element>(
    a: ArrayView2<f32>,
    b: ArrayView2<E>,
    mut c: ArrayViewMut2<f32>,
    width: usize,
    threads: Threads,
    band: impl Fn(&[&[f32]], ArrayView2<E>, ArrayViewMut2<f32>) + Sync,
) {
    let a = a.as_standard_layout();
    let rows: Vec<&[f32]> = a
        .rows()
        .into_iter()
        .map(|r| r.to_slice().expect("standard layout"))
        .collect();
    let run = |b_band: ArrayView2<E>, c_band: ArrayViewMut2<f32>| band(&rows, b_band, c_band);
    match threads {
        Threads::Pool => split_bands(b, c, width, &run),
        Threads::Caller => {
            let (b_bands, c_bands) = (
                b.axis_chunks_iter(Axis(1), width),
                c.axis_chunks_iter_mut(Axis(1), width),
            );
            b_bands.zip(c_bands).for_each(|(b, c)| run(b, c));
        }
    }
}

/// `run` on each band of `width` columns of `b` and `c`, on the pool: the
/// bands cut in two halves (by their count), each half a rayon task
/// (`join`), down to one band. Each thread then reads one stretch of `b`
/// front to back, and a thread that is done takes half of what another has
/// left. Over the 154 MB of an `f32` `wteᵀ`, one row, with the same dot
/// product per column: a parallel iterator over the bands (rayon's adaptive
/// split, as before) read 0.74–0.95 of the bandwidth reading, this split
/// 0.92–1.05 (the host's fast level, 75 runs; AMD EPYC Zen 4, 2 threads,
/// alternated in one process; `docs/bench.md`, "fast-level kernels").
fn split_bands<E: Element>(
    b: ArrayView2<E>,
    c: ArrayViewMut2<f32>,
    width: usize,
    run: &(impl Fn(ArrayView2<E>, ArrayViewMut2<f32>) + Sync),
) {
    let bands = b.ncols().div_ceil(width);
    if bands <= 1 {
        return run(b, c);
    }
    let mid = bands / 2 * width;
    let (b_front, b_back) = b.split_at(Axis(1), mid);
    let (c_front, c_back) = c.split_at(Axis(1), mid);
    rayon::join(
        || split_bands(b_front, c_front, width, run),
        || split_bands(b_back, c_back, width, run),
    );
}
