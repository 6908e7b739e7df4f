//! Causal scaled dot-product attention, for one head and for many.

use ndarray::{s, Array2, Array3, ArrayView1, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

#[cfg(doc)]
use crate::reference;

use super::convert::{widen, widened, Element};
use super::fastmath::{self, dot, exp_sum, max_lanes, scale_max};
use super::gemm::{product, tree_steps, Output, Threads, TreeStep, GEMV_MAX_ROWS, GEMV_ROW_BLOCK};
use super::simd::{prefetch_row, simd_targets};

/// One row of scores: the first `seen` scores are scaled (then
/// padding keys set to `-inf`), the rest set to `-inf`. Returns the row's
/// maximum, the shift its softmax needs.
fn scale_and_mask_row(
    row: &mut [f32],
    seen: usize,
    scale: f32,
    key_mask: Option<ArrayView1<bool>>,
) -> f32 {
    let (seen, future) = row.split_at_mut(seen);
    future.fill(f32::NEG_INFINITY);
    match key_mask {
        None => scale_max(seen, scale),
        Some(mask) => {
            fastmath::scale(seen, scale);
            for (s, _) in seen.iter_mut().zip(mask).filter(|(_, &real)| !real) {
                *s = f32::NEG_INFINITY;
            }
            max_lanes(seen)
        }
    }
}

/// The attention maps of every head, kept when a caller asks for them.
#[derive(Clone, Debug)]
pub struct AttentionMaps {
    /// Scaled, masked scores before the softmax, `[n_head, Tq, Tk]` (`-inf` where masked).
    pub scores: Array3<f32>,
    /// Attention probabilities, `[n_head, Tq, Tk]`; each row sums to 1.
    pub probs: Array3<f32>,
}

/// Multi-head causal attention: split heads, attend, merge, keeping every
/// head's scores and probabilities `[n_head, Tq, Tk]` when `keep_maps` (what
/// a trace records as `h.{i}.attn.scores`/`probs` and
/// [`inspect`](crate::inspect) draws). The fast twin of
/// [`reference::split_heads`] → [`reference::multi_head_attention`] →
/// [`reference::merge_heads`]: `q: [Tq, C]`, `k, v: [Tk, C]` with
/// `C = n_head·d` → `[Tq, C]`. Head `h` is the column slice `h·d .. (h+1)·d`
/// of each of `q`, `k`, `v` (a view, no copy) and its output lands in the
/// same columns of the result, which is the "merge". Heads run in parallel.
///
/// `k` and `v` may be kept in half precision (a half
/// [`KvCache`](crate::KvCache)'s): they are widened to `f32` as they are
/// read, and the result is bit for bit that of their `f32` values.
pub fn attend<E: Element>(
    q: ArrayView2<f32>,
    k: ArrayView2<E>,
    v: ArrayView2<E>,
    n_head: usize,
    scale: f32,
    key_mask: Option<ArrayView1<bool>>,
    keep_maps: bool,
) -> (Array2<f32>, Option<AttentionMaps>) {
    attend_fetching(q, k, v, n_head, scale, key_mask, keep_maps, &[])
}

/// [`attend`], asking meanwhile for `next` (the bytes the caller reads right
/// after: a decoding step's output projection, `attn.c_proj`'s weights) to
/// be brought into the cache, when it attends with one query (a decoding
/// step; see [`attend_one`]). A hint only: the result is [`attend`]'s, bit
/// for bit.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_fetching<E: Element>(
    q: ArrayView2<f32>,
    k: ArrayView2<E>,
    v: ArrayView2<E>,
    n_head: usize,
    scale: f32,
    key_mask: Option<ArrayView1<bool>>,
    keep_maps: bool,
    next: &[u8],
) -> (Array2<f32>, Option<AttentionMaps>) {
    let ((tq, c), tk) = (q.dim(), k.nrows());
    assert_eq!(
        c % n_head,
        0,
        "width {c} is not divisible by {n_head} heads"
    );
    assert!(tq <= tk, "attention: {tq} queries but only {tk} keys");
    if tq == 1 && !keep_maps {
        if let Some(merged) = attend_one(q, k, v, n_head, scale, key_mask, next) {
            return (merged, None);
        }
    }
    let d = c / n_head;
    let mut merged = Array2::zeros((tq, c));
    let mut maps = keep_maps.then(|| AttentionMaps {
        scores: Array3::from_elem((n_head, tq, tk), f32::NEG_INFINITY),
        probs: Array3::zeros((n_head, tq, tk)),
    });
    let head_maps = maps.as_mut().map(|m| {
        m.scores
            .axis_iter_mut(Axis(0))
            .zip(m.probs.axis_iter_mut(Axis(0)))
            .map(Some)
            .collect::<Vec<_>>()
    });
    let head_maps = head_maps.unwrap_or_else(|| (0..n_head).map(|_| None).collect());
    merged
        .axis_chunks_iter_mut(Axis(1), d)
        .into_par_iter()
        .zip(head_maps)
        .enumerate()
        .for_each(|(h, (mut out, mut maps))| {
            let cols = s![.., h * d..(h + 1) * d];
            let (q, k, v) = (q.slice(cols), k.slice(cols), v.slice(cols));
            // Half keys and values are widened to f32, one head's at a time.
            let (k_wide, v_wide);
            let (k, v) = match (E::view_f32(k), E::view_f32(v)) {
                (Some(k), Some(v)) => (k, v),
                _ => {
                    (k_wide, v_wide) = (widened(k), widened(v));
                    (k_wide.view(), v_wide.view())
                }
            };
            // kᵀ [d, Tk]. For a prompt it is written out once per head so
            // that every block's q·kᵀ reads it along rows (the GEMM then
            // copies contiguous runs instead of gathering one number at a
            // time); a decoding step's few queries read k as it lies.
            let k_t_owned = (tq > GEMV_MAX_ROWS).then(|| k.t().as_standard_layout().into_owned());
            let k_t = k_t_owned.as_ref().map_or_else(|| k.t(), |k_t| k_t.view());
            // Queries in blocks: block rows r0..r1 see only the keys before
            // position tk - tq + r1, so the masked upper triangle is skipped.
            // Each head is one task: its products run on this thread.
            for (b, q_block) in q.axis_chunks_iter(Axis(0), QUERY_BLOCK).enumerate() {
                let r0 = b * QUERY_BLOCK;
                let r1 = r0 + q_block.nrows();
                let visible = tk - tq + r1;
                let block_maps = maps.as_mut().map(|(scores, probs)| {
                    let rows = s![r0..r1, ..visible];
                    (scores.slice_mut(rows), probs.slice_mut(rows))
                });
                attend_block(
                    q_block,
                    k_t.slice(s![.., ..visible]),
                    v.slice(s![..visible, ..]),
                    tk - tq + r0,
                    scale,
                    key_mask.map(|m| m.slice_move(s![..visible])),
                    out.slice_mut(s![r0..r1, ..]),
                    block_maps,
                );
            }
        });
    (merged, maps)
}

/// Queries attended together: a block of rows only computes scores for the
/// keys its last row can see.
const QUERY_BLOCK: usize = 64;

/// One block of queries of one head: `out = softmax(scale·q·kᵀ + M)·v`.
///
/// Shapes: `q: [rows, d]` (the queries at positions `first..first + rows`),
/// `k_t: [d, Tk]` (the keys, transposed), `v: [Tk, d]`, `out: [rows, d]`;
/// `maps`, when given, receive the scores and probabilities `[rows, Tk]`.
///
/// The softmax's normalisation is left for last: with `e = exp(s - max(s))`
/// (0 where masked), `out = (e·v) / Σe`, which is `softmax(s)·v` with one
/// division per output instead of one per score.
#[allow(clippy::too_many_arguments)]
fn attend_block(
    q: ArrayView2<f32>,
    k_t: ArrayView2<f32>,
    v: ArrayView2<f32>,
    first: usize,
    scale: f32,
    key_mask: Option<ArrayView1<bool>>,
    mut out: ArrayViewMut2<f32>,
    mut maps: Option<(ArrayViewMut2<f32>, ArrayViewMut2<f32>)>,
) {
    let (rows, visible) = (q.nrows(), k_t.ncols());
    let mut e = Array2::zeros((rows, visible));
    product(q, k_t, e.view_mut(), Output::Overwrite, Threads::Caller); // q·kᵀ
    let mut inv_sums = Vec::with_capacity(rows);
    for (i, mut row) in e.rows_mut().into_iter().enumerate() {
        let row = row.as_slice_mut().expect("a fresh matrix is row-major");
        let seen = (first + i + 1).min(visible); // keys 0..=position
        let max = scale_and_mask_row(row, seen, scale, key_mask);
        if let Some((scores, _)) = maps.as_mut() {
            scores.row_mut(i).assign(&ArrayView1::from(&*row));
        }
        if max == f32::NEG_INFINITY {
            row.fill(0.0); // nothing visible: the row attends to nothing
            inv_sums.push(0.0);
        } else {
            let (seen, future) = row.split_at_mut(seen);
            future.fill(0.0);
            inv_sums.push(1.0 / exp_sum(seen, max));
        }
    }
    if rows <= GEMV_MAX_ROWS {
        // A decoding step: the matrix–vector kernel streams v once.
        product(
            e.view(),
            v,
            out.view_mut(),
            Output::Overwrite,
            Threads::Caller,
        );
    } else {
        // out = e·v, computed as outᵀ = vᵀ·eᵀ: in that orientation the GEMM
        // reads both inputs along their contiguous axis and repacks neither.
        product(
            v.t(),
            e.t(),
            out.view_mut().reversed_axes(),
            Output::Overwrite,
            Threads::Caller,
        );
    }
    for (mut row, &inv) in out.rows_mut().into_iter().zip(&inv_sums) {
        row *= inv;
    }
    if let Some((_, probs)) = maps.as_mut() {
        for ((mut p, e), &inv) in probs.rows_mut().into_iter().zip(e.rows()).zip(&inv_sums) {
            p.zip_mut_with(&e, |p, &e| *p = e * inv);
        }
    }
}

/// [`attend`] for one query (a decoding step) over keys and values whose
/// rows are contiguous (a [`KvCache`](crate::KvCache)'s): `q: [1, C]`,
/// `k, v: [Tk, C]` → `[1, C]`. `None` unless `k` and `v` are row-major and
/// contiguous (the caller then runs the general path).
///
/// The general path runs each head as its own task and reads its `d`
/// columns of every cached row (`4·d` bytes, `4·C` apart); here a task takes
/// a group of adjacent heads (as many groups as threads) and reads their
/// columns of each row of `k`, then of `v`, front to back in one stretch
/// (asking for the rows [`KV_PREFETCH_ROWS`] ahead as it goes), and the
/// whole step is one parallel region instead of one per head.
///
/// Each number is computed by the same operations in the same order as on
/// the general path (whose products are the matrix–vector kernels:
/// `dot` for `q·kᵀ`; `e·v` in blocks of `GEMV_ROW_BLOCK` keys, each summed
/// from zero one key after the other, the blocks' sums then added in the
/// tree of `gemm::tree_sum`), so
/// the result is bit for bit the same, whatever the grouping, the thread
/// count or the SIMD level. Keys and values in half precision are widened a
/// row at a time as they are read, into the same `f32`s.
///
/// `next` (the output projection's weights in a decoding step, or nothing)
/// is partly asked for meanwhile, into the L2 cache (see
/// [`one_query_heads`]): each group of heads the first [`NEXT_FETCH_BYTES`]
/// of its share, the stretch of `next` in the same proportion as its
/// columns (for `attn.c_proj`, `[C, C]` with a row per merged column, the
/// rows its heads' outputs multiply, which the matrix–vector kernel's tree
/// gives the same thread when the groups are as many as the threads). The
/// attention of one query waits on the cache's rows more than it reads
/// (9.5 MB a step of GPT-2 small at 129 positions, in about 1 ms at the
/// host's fast level, 0.2 ms with the rows in the caches), so the memory
/// has room meanwhile for the first rows the product reads.
#[allow(clippy::too_many_arguments)]
fn attend_one<E: Element>(
    q: ArrayView2<f32>,
    k: ArrayView2<E>,
    v: ArrayView2<E>,
    n_head: usize,
    scale: f32,
    key_mask: Option<ArrayView1<bool>>,
    next: &[u8],
) -> Option<Array2<f32>> {
    let (c, tk) = (q.ncols(), k.nrows());
    let d = c / n_head;
    let (Some(k_all), Some(v_all)) = (k.as_slice(), v.as_slice()) else {
        return None;
    };
    if tk == 0 || d == 0 {
        return None;
    }
    let q = q.row(0).to_vec();
    let per_task = n_head.div_ceil(rayon::current_num_threads()).max(1);
    let mut merged = Array2::zeros((1, c));
    let out = merged.as_slice_mut().expect("a fresh matrix is row-major");
    out.par_chunks_mut(per_task * d)
        .enumerate()
        .for_each(|(g, out)| {
            let heads = out.len() / d;
            let col0 = g * per_task * d;
            let mut e = vec![0.0f32; heads * tk];
            // This group's stretch of `next`: the first NEXT_FETCH_BYTES of
            // its share, from the line where the share begins.
            let start = next.len() * col0 / c / 64 * 64; // col0 < c: inside `next`
            let end = (start + NEXT_FETCH_BYTES).min(next.len());
            one_query_heads(
                &next[start..end],
                &q[col0..col0 + heads * d],
                &k_all[col0..],
                &v_all[col0..],
                c,
                (d, tk, scale),
                key_mask,
                &mut e,
                out,
            );
        });
    Some(merged)
}

/// How many rows ahead [`one_query_heads`] asks for the keys and values it
/// will read next, into the L2 cache (on x86-64; elsewhere nothing). A
/// decoding step's cache comes from memory (the weights streamed since its
/// last use have pushed it out of every cache), in stretches too short for
/// the hardware prefetcher to pick up: 96 attentions of one query over
/// 32, 256 and 1024 cached positions (8 sequences × 12 blocks of GPT-2
/// small, the caches evicted between rounds) took 1.03–1.48, 6.6–7.5 and
/// 23.4–24.0 ms (best of 30) asking 4 rows ahead, 1.86–2.42, 13.9–16.6 and
/// 53–55 ms without (AMD EPYC Zen 4, 2 threads, alternated). 2, 8 and 16
/// rows ahead were no better than 4.
const KV_PREFETCH_ROWS: usize = 4;

/// How much of the weights read after a decoding step's attention (see
/// [`attend_one`]) each group of heads asks for while it attends: the first
/// 192 KB of its share (64 rows of GPT-2 small's `f32` `attn.c_proj`: with
/// two threads, the first of the six 64-row blocks of the product that its
/// thread reads).
///
/// Decoding steps of the `f32` GPT-2 small at 129–160 cached positions, each
/// between two readings of the bandwidth (256 MB), steps fetching and not
/// fetching alternated in one process (30 rounds of 32), medians of the
/// steps' fractions of the reading where both readings put the host at the
/// same level (AMD EPYC Zen 4, 2 threads; the host's slow level 33–37 GB/s,
/// its fast one 55–65):
///
/// | each group fetches | fast level | slow level |
/// |---|---|---|
/// | its whole share (1.2 MB) | 0.733 → 0.750 | 0.932 → 0.921, 0.928 → 0.917 |
/// | 640 KB | 0.728 → 0.746 | 0.922 → 0.914 |
/// | 384 KB | 0.716 → 0.729 | 0.911 → 0.910 |
/// | **192 KB** | **0.722 → 0.740, 0.740 → 0.748** | **0.918 → 0.920, 0.934 → 0.934, 0.925 → 0.928** |
/// | 96 KB | 0.737 → 0.743 (31 steps) | 0.929 → 0.932 |
///
/// Fetching much more slows the slow level, where the memory, not each
/// core, is the limit and the attention's own reads wait behind the
/// fetches. The `f16` model fetching 192 KB: level (fast 0.631 →
/// 0.630, slow 0.849 → 0.844).
const NEXT_FETCH_BYTES: usize = 192 * 1024;

/// `x` as `f32`s: itself, or widened into `buffer` (at least as long).
#[inline(always)]
fn as_f32<'a, E: Element>(x: &'a [E], buffer: &'a mut [f32]) -> &'a [f32] {
    match E::slice_f32(x) {
        Some(x) => x,
        None => {
            let buffer = &mut buffer[..x.len()];
            widen(x, buffer);
            buffer
        }
    }
}

simd_targets! {
    /// A group of `heads` adjacent heads of [`attend_one`]: `q` holds their
    /// `heads·d` query columns, `e` (`[heads, tk]`) receives the unnormalised
    /// probabilities, `out` (`heads·d`) the heads' outputs. `k` and `v`
    /// start at the group's first column of their first row; rows are `ld`
    /// apart. The lines of `next` are asked for into the L2 cache as the rows
    /// of `k` and `v` are read, as many with each row (the hint's
    /// instructions spread over the loop rather than all at once, which would
    /// hold the loop up while the memory catches up with them).
    #[allow(clippy::too_many_arguments)]
    fn one_query_heads<E: Element>(
        next: &[u8],
        q: &[f32],
        k: &[E],
        v: &[E],
        ld: usize,
        shape: (usize, usize, f32),
        key_mask: Option<ArrayView1<bool>>,
        e: &mut [f32],
        out: &mut [f32],
    ) {
        let (d, tk, scale) = shape;
        let width = q.len();
        // A half row widened (an f32 row is read in place).
        let mut wide = vec![0.0f32; if E::slice_f32(k).is_some() { 0 } else { width }];
        // The lines of `next` asked for with the `i`-th row read (of `2·tk`).
        let lines = next.len().div_ceil(64);
        let per_row = lines.div_ceil(2 * tk);
        let fetch_next = |i: usize| {
            let first = (i * per_row).min(lines);
            let last = ((i + 1) * per_row).min(lines);
            prefetch_row(next, first * 64, (last - first) * 64);
        };
        // q·kᵀ: each cached row's columns of these heads, in one stretch,
        // the row KV_PREFETCH_ROWS further on asked for meanwhile.
        for j in 0..tk {
            prefetch_row(k, (j + KV_PREFETCH_ROWS) * ld, width);
            fetch_next(j);
            let k_row = as_f32(&k[j * ld..j * ld + width], &mut wide);
            for (h, (q_h, k_h)) in q.chunks_exact(d).zip(k_row.chunks_exact(d)).enumerate() {
                e[h * tk + j] = dot(q_h, k_h);
            }
        }
        // The first rows of `v`, asked for now so that they arrive while
        // the softmax runs.
        for j in 0..KV_PREFETCH_ROWS.min(tk) {
            prefetch_row(v, j * ld, width);
        }
        // softmax numerators, and 1/Σ per head (0 if nothing is visible).
        let mut inv = [0.0f32; 64];
        let mut inv_sums = Vec::new();
        let inv: &mut [f32] = if width / d <= inv.len() {
            &mut inv[..width / d]
        } else {
            inv_sums.resize(width / d, 0.0);
            &mut inv_sums
        };
        for (row, inv) in e.chunks_exact_mut(tk).zip(inv.iter_mut()) {
            let max = scale_and_mask_row(row, tk, scale, key_mask);
            if max == f32::NEG_INFINITY {
                row.fill(0.0);
                *inv = 0.0;
            } else {
                *inv = 1.0 / exp_sum(row, max);
            }
        }
        // e·v: blocks of keys, each summed from zero key by key, the blocks'
        // sums added in the matrix–vector kernel's tree (on a stack of
        // sums); every row of `v` read in one stretch.
        let blocks = tk.div_ceil(GEMV_ROW_BLOCK);
        let mut steps = Vec::with_capacity(2 * blocks);
        tree_steps(blocks, &mut steps);
        let depth = (usize::BITS - (blocks - 1).leading_zeros()) as usize + 1;
        let mut stack = vec![0.0f32; depth * width];
        let (mut top, mut j0) = (0, 0);
        for step in steps {
            match step {
                TreeStep::Block => {
                    let partial = &mut stack[top * width..(top + 1) * width];
                    for j in j0..(j0 + GEMV_ROW_BLOCK).min(tk) {
                        prefetch_row(v, (j + KV_PREFETCH_ROWS) * ld, width);
                        fetch_next(tk + j);
                        let v_row = as_f32(&v[j * ld..j * ld + width], &mut wide);
                        for (h, (acc, v_h)) in partial.chunks_exact_mut(d).zip(v_row.chunks_exact(d)).enumerate() {
                            let x = e[h * tk + j];
                            for (a, &w) in acc.iter_mut().zip(v_h) {
                                *a += x * w;
                            }
                        }
                    }
                    j0 += GEMV_ROW_BLOCK;
                    top += 1;
                }
                TreeStep::Add => {
                    top -= 1;
                    let (below, above) = stack.split_at_mut(top * width);
                    let sum = &mut below[(top - 1) * width..];
                    sum.iter_mut().zip(&mut above[..width]).for_each(|(s, p)| {
                        *s += *p;
                        *p = 0.0;
                    });
                }
            }
        }
        out.copy_from_slice(&stack[..width]);
        for (out_h, &inv) in out.chunks_exact_mut(d).zip(inv.iter()) {
            out_h.iter_mut().for_each(|o| *o *= inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asking for the next weights while attending is a hint only: the same
    /// bits for any length of `next` (none, a part of a line, more lines than
    /// rows to spread them over, more than a group fetches), any number of
    /// cached positions around a block of keys, and any number of groups.
    #[test]
    fn fetching_the_next_weights_changes_no_bit() {
        let (n_head, d) = (6, 8);
        let c = n_head * d;
        let next = vec![7u8; 3 * NEXT_FETCH_BYTES + 5];
        for tk in [1, 2, 63, 64, 65, 129] {
            let value = |i: usize, j: usize, salt: usize| {
                (((i * 31 + j * 17 + salt) % 23) as f32 - 11.0) * 0.093
            };
            let q = Array2::from_shape_fn((1, c), |(_, j)| value(tk, j, 1));
            let k = Array2::from_shape_fn((tk, c), |(i, j)| value(i, j, 2));
            let v = Array2::from_shape_fn((tk, c), |(i, j)| value(i, j, 3));
            for threads in [1, 2, 4] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("a pool");
                pool.install(|| {
                    let (plain, _) = attend(q.view(), k.view(), v.view(), n_head, 0.35, None, false);
                    for len in [0, 1, 63, 64, 1000, next.len()] {
                        let (fetching, _) = attend_fetching(
                            q.view(),
                            k.view(),
                            v.view(),
                            n_head,
                            0.35,
                            None,
                            false,
                            &next[..len],
                        );
                        let same = plain
                            .iter()
                            .zip(&fetching)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "tk {tk}, {threads} threads, {len} bytes fetched: {plain} vs {fetching}");
                    }
                });
            }
        }
    }
}
