//! The fast matrix products behind [`matmul`](super::matmul): a streaming
//! matrix–vector kernel for a few rows, a tiled parallel GEMM for many.
//!
//! Why two: decoding multiplies **one** row by each weight matrix. That is
//! bound by memory bandwidth (every weight is read once per token), and a GEMM
//! library would first copy ("pack") the whole matrix into its own layout, so
//! it reads every weight twice and writes it once. The matrix–vector kernels
//! below read each weight exactly once, in the order it lies in memory. With
//! many rows (a prompt) the product is bound by arithmetic instead, and
//! `matrixmultiply`'s packed AVX/FMA kernels are what we want; we only split
//! the output into tiles and run the tiles in parallel with rayon.
//!
//! Every output element is computed by one thread, in an order that depends
//! on the shapes only — never on the number of threads or on how the work was
//! split — so results are bit-identical whatever the thread count.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

/// Products with at most this many rows on the left use the matrix–vector kernels.
pub const GEMV_MAX_ROWS: usize = 4;

/// GEMM tile: rows of the output.
const TILE_ROWS: usize = 256;
/// GEMM tile: columns of the output (a multiple of the 8-wide microkernel).
const TILE_COLS: usize = 128;
/// Columns per task in the matrix–vector kernels.
const GEMV_COLS: usize = 256;

/// `c = a · b`. Shapes: `a: [m, k]`, `b: [k, n]`, `c: [m, n]` (overwritten,
/// standard row-major layout).
pub fn matmul_into(a: ArrayView2<f32>, b: ArrayView2<f32>, mut c: ArrayViewMut2<f32>) {
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
    if m <= GEMV_MAX_ROWS && c.is_standard_layout() {
        if b.strides()[1] == 1 {
            return gemv_rows(a, b, c);
        }
        if b.strides()[0] == 1 {
            return gemv_columns(a, b, c);
        }
    }
    gemm_tiles(a, b, c.view_mut());
}

/// Many rows: tiles of `TILE_ROWS × TILE_COLS` outputs in parallel, each a
/// single-threaded `matrixmultiply` GEMM.
fn gemm_tiles(a: ArrayView2<f32>, b: ArrayView2<f32>, mut c: ArrayViewMut2<f32>) {
    c.axis_chunks_iter_mut(Axis(0), TILE_ROWS)
        .into_par_iter()
        .zip(a.axis_chunks_iter(Axis(0), TILE_ROWS))
        .for_each(|(mut c_rows, a_rows)| {
            c_rows
                .axis_chunks_iter_mut(Axis(1), TILE_COLS)
                .into_par_iter()
                .zip(b.axis_chunks_iter(Axis(1), TILE_COLS))
                .for_each(|(mut c_tile, b_tile)| {
                    general_mat_mul(1.0, &a_rows, &b_tile, 0.0, &mut c_tile);
                });
        });
}

/// A few rows times a matrix whose rows are contiguous (a `Conv1D` weight
/// `[in, out]`): `cₜ = Σᵢ aₜᵢ · bᵢ`, adding whole rows of `b` scaled by one
/// number, four rows at a time. Each task owns a band of output columns and
/// streams that band of every row of `b` once.
fn gemv_rows(a: ArrayView2<f32>, b: ArrayView2<f32>, mut c: ArrayViewMut2<f32>) {
    let k = a.ncols();
    c.axis_chunks_iter_mut(Axis(1), GEMV_COLS)
        .into_par_iter()
        .zip(b.axis_chunks_iter(Axis(1), GEMV_COLS))
        .for_each(|(mut c_band, b_band)| {
            c_band.fill(0.0);
            let row = |i: usize| b_band.row(i).to_slice().expect("unit column stride");
            let mut i = 0;
            while i + 4 <= k {
                let (b0, b1, b2, b3) = (row(i), row(i + 1), row(i + 2), row(i + 3));
                for (t, mut acc) in c_band.rows_mut().into_iter().enumerate() {
                    let acc = acc.as_slice_mut().expect("standard layout");
                    let (x0, x1, x2, x3) = (a[[t, i]], a[[t, i + 1]], a[[t, i + 2]], a[[t, i + 3]]);
                    for ((((y, &w0), &w1), &w2), &w3) in
                        acc.iter_mut().zip(b0).zip(b1).zip(b2).zip(b3)
                    {
                        *y += x0 * w0 + x1 * w1 + x2 * w2 + x3 * w3;
                    }
                }
                i += 4;
            }
            for i in i..k {
                let bi = row(i);
                for (t, mut acc) in c_band.rows_mut().into_iter().enumerate() {
                    let acc = acc.as_slice_mut().expect("standard layout");
                    let x = a[[t, i]];
                    for (y, &w) in acc.iter_mut().zip(bi) {
                        *y += x * w;
                    }
                }
            }
        });
}

/// A few rows times a matrix whose columns are contiguous (`wteᵀ`, or `kᵀ`
/// in attention): `cₜⱼ = aₜ · b₍:,ⱼ₎`, one dot product per output, each column
/// of `b` read once for all rows.
fn gemv_columns(a: ArrayView2<f32>, b: ArrayView2<f32>, mut c: ArrayViewMut2<f32>) {
    let a = a.as_standard_layout();
    let rows: Vec<&[f32]> = a
        .rows()
        .into_iter()
        .map(|r| r.to_slice().expect("standard layout"))
        .collect();
    c.axis_chunks_iter_mut(Axis(1), GEMV_COLS)
        .into_par_iter()
        .zip(b.axis_chunks_iter(Axis(1), GEMV_COLS))
        .for_each(|(mut c_band, b_band)| {
            for (j, column) in b_band.columns().into_iter().enumerate() {
                let column = column.to_slice().expect("unit row stride");
                for (t, row) in rows.iter().enumerate() {
                    c_band[[t, j]] = dot_lanes(row, column);
                }
            }
        });
}

/// Dot product of two slices with 16 independent partial sums, which the
/// compiler turns into SIMD lanes; the partial sums are added in a fixed order.
pub fn dot_lanes(x: &[f32], y: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (xs, ys) in xc.zip(yc) {
        for l in 0..LANES {
            acc[l] += xs[l] * ys[l];
        }
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] += acc[l + width];
        }
    }
    acc[0] + tail
}
