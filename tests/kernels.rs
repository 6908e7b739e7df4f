//! The fast matrix products against their reference twin (`reference::matmul`, `ndarray`'s `.dot`), for
//! every path: few rows × row-contiguous matrix, few rows × column-contiguous
//! matrix (a transposed view), 5–32 rows × a contiguous matrix (register
//! tiles), 5–32 rows × a column-contiguous matrix (the head's tiles of dot
//! products), many rows (tiled GEMM), odd sizes and strides.
//! And the results must not depend on the thread count, bit for bit.
//!
//! Every test runs at every SIMD level this CPU has (`kernels::simd`:
//! AVX-512, AVX2 + FMA, AVX, portable), forced one after the other; they
//! take turns through one lock, since the level is global.

mod common;

use std::sync::Mutex;

use common::{assert_close, Tol};
use gpt2_ndarray::generate::Rng;
use gpt2_ndarray::kernels::matmul;
use gpt2_ndarray::kernels::simd::{self, force_simd, Simd};
use gpt2_ndarray::reference::matmul as reference_matmul;
use ndarray::{s, Array2};

static LEVEL: Mutex<()> = Mutex::new(());

/// Run `f` at every SIMD level the CPU has, best first, then go back to the best.
fn at_every_level(mut f: impl FnMut(Simd)) {
    let _turn = LEVEL.lock().unwrap_or_else(|e| e.into_inner());
    let levels = simd::available();
    assert!(levels.contains(&Simd::Portable));
    for &level in &levels {
        assert!(
            force_simd(level),
            "{level} is available but cannot be forced"
        );
        assert_eq!(simd::level(), level);
        f(level);
    }
    force_simd(levels[0]);
}

fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = Rng::new(seed);
    Array2::from_shape_fn((rows, cols), |_| (rng.next_f64() * 2.0 - 1.0) as f32)
}

/// A sum of `k` products of numbers in [-1, 1] in another order: rounding
/// differences grow like `k · ε · |partial sums|`, so the absolute budget scales
/// with `k` (1e-7 per term, ~1.7 ulp of the typical partial sum).
fn tol(k: usize) -> Tol {
    Tol {
        atol: 1e-7 * k as f32,
        rtol: 1e-5,
    }
}

#[test]
fn every_matmul_path_equals_the_plain_definition() {
    at_every_level(every_matmul_path_at_this_level);
}

fn every_matmul_path_at_this_level(level: Simd) {
    // (m, k, n): GEMV sizes (m <= 4) with k not a multiple of 4 or 16, and GEMM
    // sizes crossing the 256-row and 128-column tiles.
    for (m, k, n) in [
        (1, 7, 5),
        (1, 768, 300),
        (3, 37, 513),
        (4, 16, 16),
        // Rows wider than 1024: the matrix–vector kernel adds 8 rows per
        // pass, then the last k mod 8 one by one.
        (1, 770, 1100),
        (2, 45, 2304),
        (5, 9, 3),
        // The few-rows kernel (5..=32 rows): whole 6×16 tiles, a last partial
        // group of rows, columns past the last 16 (and a band of only those),
        // k not a multiple of its 8-row steps.
        (6, 8, 16),
        (16, 100, 400),
        (13, 33, 391),
        (29, 770, 50),
        (32, 64, 1000),
        // The AVX-512 tile (8 × 32): one group of 8 rows and one past it,
        // whole 32-column strips, a tail of columns inside a strip, bands
        // of 384 columns and a last narrower one, k past a multiple of 8.
        (8, 16, 64),
        (9, 31, 96),
        (24, 200, 800),
        (31, 9, 390),
        (33, 20, 30), // one row past it: the GEMM
        // Decoding batches times the tied head (a column-contiguous matrix:
        // the head's dot-product tiles up to 32 rows, then the GEMM): odd
        // rows, several 256-column bands, the batch sizes 48-65.
        (7, 13, 259),
        (48, 768, 517),
        (64, 40, 70),
        (65, 24, 33),
        (300, 70, 260),
        (1024, 24, 70), // a whole GPT-2 context in one product
    ] {
        let a = random(m, k, 1);
        let b = random(k, n, 2);
        let name = format!("[{m},{k}]·[{k},{n}] at {level}");
        let expected = reference_matmul(a.view(), b.view());
        assert_close(
            &format!("{name} row-major"),
            matmul(a.view(), b.view()).view().into_dyn(),
            expected.view().into_dyn(),
            tol(k),
        );
        // b as the transpose of a [n, k] matrix: columns contiguous (the tied head, kᵀ).
        let bt = b.t().as_standard_layout().into_owned();
        assert_close(
            &format!("{name} transposed"),
            matmul(a.view(), bt.t()).view().into_dyn(),
            expected.view().into_dyn(),
            tol(k),
        );
        // b as a column slice of a wider matrix (q, k, v inside c_attn's output).
        let wide = random(k, n + 6, 3);
        let b_slice = wide.slice(s![.., 3..n + 3]);
        let expected = reference_matmul(a.view(), b_slice);
        assert_close(
            &format!("{name} strided"),
            matmul(a.view(), b_slice).view().into_dyn(),
            expected.view().into_dyn(),
            tol(k),
        );
    }
}

#[test]
fn products_accept_any_left_layout_and_add_into_the_output() {
    at_every_level(any_left_layout_at_this_level);
}

fn any_left_layout_at_this_level(level: Simd) {
    use gpt2_ndarray::kernels::gemm::{matmul_into, Output};
    // Every kernel: matrix–vector, few rows, GEMM.
    for (m, k, n) in [(3, 40, 70), (16, 40, 70), (100, 40, 70)] {
        let b = random(k, n, 7);
        // a as a column slice of a wider matrix, and as a transposed view.
        let wide = random(m, k + 5, 8);
        let a_slice = wide.slice(s![.., 2..k + 2]);
        let a_t_owned = random(k, m, 9);
        for (what, a) in [("sliced", a_slice), ("transposed", a_t_owned.t())] {
            let name = format!("[{m},{k}]·[{k},{n}], a {what}, at {level}");
            let start = random(m, n, 10);
            let mut c = start.clone();
            matmul_into(a, b.view(), c.view_mut(), Output::Accumulate);
            let expected = &start + &reference_matmul(a, b.view());
            assert_close(
                &format!("{name}, c += a·b"),
                c.view().into_dyn(),
                expected.view().into_dyn(),
                tol(k + 1),
            );
        }
    }
}

#[test]
fn matmul_results_do_not_depend_on_the_thread_count() {
    at_every_level(thread_counts_at_this_level);
}

fn thread_counts_at_this_level(level: Simd) {
    for (m, k, n) in [
        (1, 768, 2304),
        (2, 300, 1000),
        (16, 300, 1000),
        (29, 100, 1000),
        (7, 64, 17),
        (41, 300, 1000),
        (260, 96, 400),
    ] {
        let a = random(m, k, 4);
        let b = random(k, n, 5);
        let bt = b.t().as_standard_layout().into_owned();
        // And a half weight, which the few-rows kernel reads as stored at
        // AVX-512 and widens in blocks below it.
        let (w, _) = half_weight(k, n, 6, Dtype::F16);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                (
                    matmul(a.view(), b.view()),
                    matmul(a.view(), bt.t()),
                    matmul_weight(a.view(), w.stored()),
                )
            })
        };
        let one = run(1);
        for threads in [2, 3, 4] {
            assert_eq!(
                run(threads),
                one,
                "[{m},{k}]·[{k},{n}] (f32, and f16) with {threads} threads at {level}"
            );
        }
    }
}

/// The crate's own kernels give the same bits at every level: the matrix–
/// vector kernels and the reductions never fuse a multiply and an add, so
/// only the vector width changes; the few-rows kernel's AVX2 (6 × 16) and
/// AVX-512 (8 × 32) tiles form each sum as one chain of fused multiply–adds
/// in order of `k`. (The `gemm` crate's packed GEMM picks its own kernels and
/// is not compared.)
#[test]
fn the_levels_agree_bit_for_bit() {
    use gpt2_ndarray::kernels::fastmath::{dot_lanes, exp_sum, max_lanes, sum_lanes};
    let mut results = Vec::new();
    at_every_level(|level| {
        let products: Vec<_> = [
            (1, 768, 2304),
            (1, 131, 768),
            (1, 131, 400),
            (1, 37, 1077),
            (2, 37, 1064),
            (3, 301, 517),
            (7, 100, 400),
            (30, 77, 1000),
        ]
        .into_iter()
        .map(|(m, k, n)| {
            let (a, b) = (random(m, k, 11), random(k, n, 12));
            let bt = b.t().as_standard_layout().into_owned();
            (m, matmul(a.view(), b.view()), matmul(a.view(), bt.t()))
        })
        .collect();
        let x: Vec<f32> = random(1, 1001, 13).into_raw_vec_and_offset().0;
        let y: Vec<f32> = random(1, 1001, 14).into_raw_vec_and_offset().0;
        let mut e = x.clone();
        let sums = [
            sum_lanes(&x),
            dot_lanes(&x, &y),
            max_lanes(&x),
            exp_sum(&mut e, 1.0),
        ];
        results.push((level, products, sums, e));
    });
    let (best, products, sums, e) = &results[0];
    for (level, other_products, other_sums, other_e) in &results[1..] {
        assert_eq!(other_sums, sums, "reductions at {level} vs {best}");
        assert_eq!(other_e, e, "exp at {level} vs {best}");
        for ((m, p, pt), (_, q, qt)) in products.iter().zip(other_products) {
            // The few-rows kernel runs only where multiply–adds fuse; at the
            // other levels those rows go to the gemm crate.
            let fused = |l: &Simd| l.fuses_multiply_add() || *m <= 4;
            if fused(best) && fused(level) {
                assert_eq!(p, q, "{m} rows at {level} vs {best}");
            }
            // Times a matrix with contiguous columns, up to 32 rows: the
            // matrix–vector kernel's and the head's dot products, which
            // never fuse.
            if *m <= 32 {
                assert_eq!(pt, qt, "{m} rows, bᵀ, at {level} vs {best}");
            }
        }
    }
}

/// Units in the last place between `got` and the exact (f64) value.
fn ulps(got: f32, exact: f64) -> f64 {
    let nearest = exact as f32;
    let ulp = (f32::from_bits(nearest.abs().to_bits() + 1) - nearest.abs()) as f64;
    (got as f64 - exact).abs() / ulp
}

/// The vectorisable exponential against the exact one, on a dense sweep of
/// the range softmax and the GELUs use (and beyond): at most 2 ulp.
#[test]
fn fast_exp_is_within_two_ulp_everywhere_it_is_finite() {
    use gpt2_ndarray::kernels::fastmath::exp;
    let mut worst = (0.0f64, 0.0f32);
    let n = 2_000_000;
    for i in 0..=n {
        let x = -87.0 + (88.7 + 87.0) * i as f32 / n as f32;
        let e = ulps(exp(x), (x as f64).exp());
        if e > worst.0 {
            worst = (e, x);
        }
    }
    assert!(worst.0 <= 2.0, "exp({}) is {:.2} ulp off", worst.1, worst.0);
    assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp(-200.0), 0.0);
    assert_eq!(exp(89.0), f32::INFINITY);
    assert_eq!(exp(f32::INFINITY), f32::INFINITY);
    assert!(exp(f32::NAN).is_nan());
    // Subnormal results: close to the exact value in absolute terms.
    for x in [-87.5f32, -90.0, -100.0, -103.0] {
        assert!((exp(x) as f64 - (x as f64).exp()).abs() < 2e-45, "exp({x})");
    }
}

/// The lane-wise reductions equal the plain ones up to rounding, and keep
/// their fixed order (the same input gives the same bits).
#[test]
fn lane_reductions_match_plain_loops() {
    at_every_level(|_| lane_reductions_at_this_level());
}

fn lane_reductions_at_this_level() {
    use gpt2_ndarray::kernels::fastmath::{dot_lanes, max_lanes, sum_lanes};
    for n in [0usize, 1, 15, 16, 17, 100, 769] {
        let x: Vec<f32> = random(1, n, 7).into_raw_vec_and_offset().0;
        let y: Vec<f32> = random(1, n, 8).into_raw_vec_and_offset().0;
        let plain_sum: f64 = x.iter().map(|&v| v as f64).sum();
        let plain_dot: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
        let plain_max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!(
            (sum_lanes(&x) as f64 - plain_sum).abs() < 1e-5,
            "sum of {n}"
        );
        assert!(
            (dot_lanes(&x, &y) as f64 - plain_dot).abs() < 1e-5,
            "dot of {n}"
        );
        assert_eq!(max_lanes(&x), plain_max, "max of {n}");
        assert_eq!(sum_lanes(&x).to_bits(), sum_lanes(&x).to_bits());
    }
}

// ---- half-precision weights: widened as the kernels read them ----

use gpt2_ndarray::checkpoint::Dtype;
use gpt2_ndarray::kernels::convert::widen;
use gpt2_ndarray::kernels::matmul_weight;
use gpt2_ndarray::weights::Matrix;
use half::{bf16, f16};

/// Whether two `f32`s are the same number: equal bits, or both NaN.
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn widening_f16_and_bf16_is_exact_for_every_bit_pattern() {
    // The reference is the `half` crate's scalar conversion, which the
    // reference tier's upcast (`Matrix::to_f32`) uses: all 65 536 patterns
    // (zeros, subnormals, normals, infinities, NaNs), in one slice and in
    // odd-length pieces that leave tails after the vector loop.
    let bits: Vec<u16> = (0..=u16::MAX).collect();
    at_every_level(|level| {
        let f16s: Vec<f16> = bits.iter().map(|&b| f16::from_bits(b)).collect();
        let bf16s: Vec<bf16> = bits.iter().map(|&b| bf16::from_bits(b)).collect();
        for piece in [65_536, 1_000, 37, 1] {
            let mut got = vec![0.0f32; bits.len()];
            for (src, dst) in f16s.chunks(piece).zip(got.chunks_mut(piece)) {
                widen(src, dst);
            }
            for (h, &g) in f16s.iter().zip(&got) {
                assert!(
                    same(g, h.to_f32()),
                    "f16 {:#06x} at {level}: {g:e}",
                    h.to_bits()
                );
            }
            for (src, dst) in bf16s.chunks(piece).zip(got.chunks_mut(piece)) {
                widen(src, dst);
            }
            for (h, &g) in bf16s.iter().zip(&got) {
                assert!(
                    same(g, h.to_f32()),
                    "bf16 {:#06x} at {level}: {g:e}",
                    h.to_bits()
                );
            }
        }
    });
}

/// A random weight stored as `dtype`, and its exact `f32` upcast.
fn half_weight(k: usize, n: usize, seed: u64, dtype: Dtype) -> (Matrix, Array2<f32>) {
    let w = Matrix::from(random(k, n, seed)).to_dtype(dtype);
    let upcast = w.to_owned();
    (w, upcast)
}

#[test]
fn products_with_half_weights_equal_products_with_their_upcast() {
    at_every_level(half_products_at_this_level);
}

fn half_products_at_this_level(level: Simd) {
    // The same shapes as the f32 paths (GEMV, few rows at 6 × 16 and
    // 8 × 32, the GEMM), plus the few-rows kernel's half-depth blocks of 16
    // rows (k = 15, 16, 17, 33) and GEMMs whose half matrix spans several
    // widened panels of 2^22 values (row-major: columns; transposed: rows of
    // the stored matrix, as in the tied head), each product after one with a
    // larger or a smaller panel (the panel buffer is kept between products).
    for (m, k, n) in [
        (1, 7, 5),
        (1, 770, 1100),
        (3, 37, 513),
        (4, 16, 16),
        (2, 45, 2304),
        (5, 15, 40),
        (6, 16, 16),
        (13, 17, 391),
        (24, 33, 800),
        (29, 770, 50),
        (8, 16, 64),
        (9, 31, 96),
        (31, 9, 390),
        (32, 64, 1000),
        (33, 20, 30),
        (48, 768, 517),
        (300, 70, 260),
        (40, 64, 70_000),
        (35, 3000, 1500),
        (33, 20, 31),
    ] {
        let a = random(m, k, 11);
        for dtype in [Dtype::F16, Dtype::BF16] {
            let (w, upcast) = half_weight(k, n, 12, dtype);
            let name = format!("[{m},{k}]·{dtype}[{k},{n}] at {level}");
            let got = matmul_weight(a.view(), w.stored());
            let plain = matmul(a.view(), upcast.view());
            let (wt, upcast_t) = half_weight(n, k, 13, dtype);
            let got_t = matmul_weight(a.view(), wt.stored().t());
            let plain_t = matmul(a.view(), upcast_t.t());
            if m <= 32 {
                // The same kernel, reading halves: the same bits.
                for (g, p) in [(&got, &plain), (&got_t, &plain_t)] {
                    let differ = g.iter().zip(p.iter()).filter(|(a, b)| !same(**a, **b));
                    assert_eq!(
                        differ.count(),
                        0,
                        "{name}: not the bits of the upcast product"
                    );
                }
            }
            // And, whatever the path, equal to the plain definition.
            assert_close(
                &name,
                got.view().into_dyn(),
                reference_matmul(a.view(), upcast.view()).view().into_dyn(),
                tol(k),
            );
            assert_close(
                &format!("{name} transposed"),
                got_t.view().into_dyn(),
                reference_matmul(a.view(), upcast_t.t()).view().into_dyn(),
                tol(k),
            );
        }
    }
}

#[test]
fn half_dot_products_equal_the_f32_ones() {
    use gpt2_ndarray::kernels::fastmath::dot_lanes;
    at_every_level(|level| {
        for len in [0, 1, 15, 16, 17, 768, 1000] {
            let x = random(1, len, 21).row(0).to_vec();
            let y = random(1, len, 22).row(0).to_vec();
            let y16: Vec<f16> = y.iter().map(|&v| f16::from_f32(v)).collect();
            let yb: Vec<bf16> = y.iter().map(|&v| bf16::from_f32(v)).collect();
            let up16: Vec<f32> = y16.iter().map(|v| v.to_f32()).collect();
            let upb: Vec<f32> = yb.iter().map(|v| v.to_f32()).collect();
            assert!(
                same(dot_lanes(&x, &y16), dot_lanes(&x, &up16)),
                "f16 {len} at {level}"
            );
            assert!(
                same(dot_lanes(&x, &yb), dot_lanes(&x, &upb)),
                "bf16 {len} at {level}"
            );
        }
    });
}

/// Every row `t` of `batch` has exactly the bits of `alone(t)`, the same
/// product of that row alone (`[1, n]`).
fn assert_each_row_as_alone(name: &str, batch: &Array2<f32>, alone: impl Fn(usize) -> Array2<f32>) {
    for (t, row) in batch.rows().into_iter().enumerate() {
        let alone = alone(t);
        let differ = row
            .iter()
            .zip(alone.row(0))
            .filter(|(a, b)| !same(**a, **b))
            .count();
        assert_eq!(differ, 0, "{name}: row {t} is not the bits it gets alone");
    }
}

/// A product of 2 to `GEMV_MAX_ROWS` rows with a `Conv1D`-shaped weight
/// (the matrix–vector kernel, which reads each vector of weights once for
/// all the rows) gives every row the bits that row gets alone, for `f32`,
/// `f16` and `bf16` weights at every level: narrow and wide rows (one row
/// of weights per pass, or eight, then the last `k mod 8` one by one), a
/// tail of columns past the last vector, several blocks of 64 rows.
#[test]
fn the_matrix_vector_kernel_gives_each_row_of_a_batch_the_bits_it_gets_alone() {
    use gpt2_ndarray::kernels::gemm::GEMV_MAX_ROWS;
    assert_eq!(GEMV_MAX_ROWS, 4, "update the row counts below");
    at_every_level(|level| {
        for (k, n) in [
            (7, 5),
            (45, 1030),
            (37, 1077),
            (150, 777),
            (131, 400),
            (70, 2304),
        ] {
            for m in 2..=GEMV_MAX_ROWS {
                let a = random(m, k, 41);
                for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                    let (w, upcast) = half_weight(k, n, 42, dtype);
                    let name = format!("[{m},{k}]·{dtype}[{k},{n}] at {level}");
                    let batch = matmul_weight(a.view(), w.stored());
                    assert_each_row_as_alone(&name, &batch, |t| {
                        matmul_weight(a.slice(s![t..t + 1, ..]), w.stored())
                    });
                    assert_close(
                        &name,
                        batch.view().into_dyn(),
                        reference_matmul(a.view(), upcast.view()).view().into_dyn(),
                        tol(k),
                    );
                }
            }
        }
    });
}

/// The tied head of a batch (`[m, k]·wteᵀ`, a matrix with contiguous
/// columns; `kernels::head` for `HEAD_MIN_ROWS` (4) to `HEAD_MAX_ROWS` rows,
/// a dot product per column for 3) gives every row
/// the bits that row gets alone (the matrix–vector kernel of one row), for
/// `f32`, `f16` and `bf16` weights: whole 4 × 4 tiles and the rows and
/// columns past them, bands of 256 columns and a narrower last one, `k` not
/// a multiple of 16, the tall 8 × 2 tile with AVX-512 (8 and 16 rows whose
/// `f32` rows do not fit in the L1 cache beside 4 rows of the weight, but do
/// beside 2: `k` = 768 and 420; with `f16` weights the 4 × 4 tile), and one
/// row past the kernel (the GEMM, only close).
#[test]
fn the_head_gives_each_row_of_a_batch_the_bits_it_gets_alone() {
    use gpt2_ndarray::kernels::gemm::{HEAD_MAX_ROWS, HEAD_MIN_ROWS};
    assert_eq!(
        (HEAD_MIN_ROWS, HEAD_MAX_ROWS),
        (4, 32),
        "update the shapes below"
    );
    at_every_level(|level| {
        for (m, k, n) in [
            (3, 40, 300),
            (4, 33, 517),
            (5, 16, 4),
            (8, 768, 517),
            (16, 420, 35),
            (7, 13, 259),
            (13, 33, 1000),
            (16, 770, 300),
            (31, 15, 7),
            (32, 100, 513),
        ] {
            let a = random(m, k, 31);
            for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                let (w, upcast) = half_weight(n, k, 32, dtype);
                let name = format!("[{m},{k}]·{dtype}[{n},{k}]ᵀ at {level}");
                let batch = matmul_weight(a.view(), w.stored().t());
                assert_each_row_as_alone(&name, &batch, |t| {
                    matmul_weight(a.slice(s![t..t + 1, ..]), w.stored().t())
                });
                assert_close(
                    &name,
                    batch.view().into_dyn(),
                    reference_matmul(a.view(), upcast.t()).view().into_dyn(),
                    tol(k),
                );
            }
        }
    });
}

/// A decoding step's attention (one query over contiguous keys and values,
/// no maps: the grouped one-query kernel) gives the bits of the general
/// path (each head its own task; taken when the maps are asked for), at
/// every level and thread count: keys around the `e·v` blocks of 64, heads
/// not dividing the threads, padding keys, and a query that sees only
/// padding.
#[test]
fn one_query_attention_equals_the_general_path_bit_for_bit() {
    at_every_level(one_query_attention_at_this_level);
}

fn one_query_attention_at_this_level(level: Simd) {
    use gpt2_ndarray::kernels::attend;
    use ndarray::Array1;
    for (n_head, d) in [(1, 8), (3, 5), (12, 64), (5, 16)] {
        let c = n_head * d;
        let scale = 1.0 / (d as f32).sqrt();
        for tk in [1, 2, 63, 64, 65, 128, 129, 200] {
            let q = random(1, c, 20 + tk as u64);
            let (k, v) = (random(tk, c, 21), random(tk, c, 22));
            // No padding; left padding; every key padding (the query sees
            // nothing: zeros).
            for pad in [0, tk / 3, tk] {
                let mask = Array1::from_shape_fn(tk, |j| j >= pad);
                let key_mask = (pad > 0).then_some(mask.view());
                let (general, _) =
                    attend(q.view(), k.view(), v.view(), n_head, scale, key_mask, true);
                for threads in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let (one, maps) = pool.install(|| {
                        attend(q.view(), k.view(), v.view(), n_head, scale, key_mask, false)
                    });
                    assert!(maps.is_none());
                    let same = one
                        .iter()
                        .zip(&general)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{n_head} heads of {d}, Tk={tk}, pad={pad}, {threads} threads at {level}: \
                         {one:?} vs {general:?}"
                    );
                }
            }
        }
    }
}

/// Attention over keys and values kept in half precision (a half
/// `KvCache`'s) gives the bits of attention over their `f32` values, on every
/// path: one query over contiguous rows (widened a row at a time), several
/// queries and a query over non-contiguous rows (widened a head at a time),
/// with and without the maps, at every level and thread count.
#[test]
fn attention_over_half_keys_and_values_equals_it_over_their_f32_values() {
    at_every_level(|level| {
        attention_over_half_at_this_level::<f16>(level);
        attention_over_half_at_this_level::<bf16>(level);
    });
}

fn attention_over_half_at_this_level<H>(level: Simd)
where
    H: gpt2_ndarray::kernels::convert::Element + Default,
    [H]: half::slice::HalfFloatSliceExt,
{
    use gpt2_ndarray::kernels::attend;
    use half::slice::HalfFloatSliceExt;
    use ndarray::Array1;
    let round = |x: &Array2<f32>| -> Array2<H> {
        let mut out = Array2::from_elem(x.raw_dim(), H::default());
        out.as_slice_mut()
            .unwrap()
            .convert_from_f32_slice(x.as_slice().unwrap());
        out
    };
    for (n_head, d) in [(1, 8), (3, 5), (12, 64)] {
        let c = n_head * d;
        let scale = 1.0 / (d as f32).sqrt();
        for tk in [1, 63, 64, 65, 129, 200] {
            // Keys and values inside a wider matrix (the columns `c..2c`, as
            // in `q | k | v`) for the non-contiguous case.
            let wide_k = random(tk, 3 * c, 31 + tk as u64);
            let wide_v = random(tk, 3 * c, 32 + tk as u64);
            let (k_half, v_half) = (round(&wide_k), round(&wide_v));
            let (k_f32, v_f32) = (k_half.mapv(|h| h.to_f32()), v_half.mapv(|h| h.to_f32()));
            let cols = s![.., c..2 * c];
            let (k_half_c, v_half_c) = (
                k_half.slice(cols).as_standard_layout().into_owned(),
                v_half.slice(cols).as_standard_layout().into_owned(),
            );
            let (k_f32_c, v_f32_c) = (k_f32.slice(cols).to_owned(), v_f32.slice(cols).to_owned());
            for tq in [1, 2, 70].into_iter().filter(|&tq| tq <= tk) {
                let q = random(tq, c, 33 + tq as u64);
                for pad in [0, tk / 3] {
                    let mask = Array1::from_shape_fn(tk, |j| j >= pad);
                    let key_mask = (pad > 0).then_some(mask.view());
                    for keep_maps in [false, true] {
                        for threads in [1, 2] {
                            let pool = rayon::ThreadPoolBuilder::new()
                                .num_threads(threads)
                                .build()
                                .unwrap();
                            let run = |k, v| {
                                pool.install(|| {
                                    attend(q.view(), k, v, n_head, scale, key_mask, keep_maps)
                                })
                            };
                            let (want, want_maps) = run(k_f32_c.view(), v_f32_c.view());
                            let contiguous = pool.install(|| {
                                attend(
                                    q.view(),
                                    k_half_c.view(),
                                    v_half_c.view(),
                                    n_head,
                                    scale,
                                    key_mask,
                                    keep_maps,
                                )
                            });
                            let strided = pool.install(|| {
                                attend(
                                    q.view(),
                                    k_half.slice(cols),
                                    v_half.slice(cols),
                                    n_head,
                                    scale,
                                    key_mask,
                                    keep_maps,
                                )
                            });
                            for (case, (got, got_maps)) in
                                [("contiguous", contiguous), ("strided", strided)]
                            {
                                let what = format!(
                                    "{case} {} keys, {n_head} heads of {d}, Tq={tq} Tk={tk} pad={pad} \
                                     maps={keep_maps}, {threads} threads at {level}",
                                    std::any::type_name::<H>()
                                );
                                assert_same_bits(&got, &want, &what);
                                if let (Some(got), Some(want)) = (&got_maps, &want_maps) {
                                    assert_same_bits(&got.scores, &want.scores, &what);
                                    assert_same_bits(&got.probs, &want.probs, &what);
                                }
                                assert_eq!(got_maps.is_some(), keep_maps, "{what}");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `got` and `want` hold the same bits, else the first element that differs.
fn assert_same_bits<D: ndarray::Dimension>(
    got: &ndarray::Array<f32, D>,
    want: &ndarray::Array<f32, D>,
    what: &str,
) {
    assert_eq!(got.shape(), want.shape(), "{what}");
    if let Some((i, (g, w))) = got
        .iter()
        .zip(want)
        .enumerate()
        .find(|(_, (g, w))| g.to_bits() != w.to_bits())
    {
        panic!("{what}: element {i} is {g} but {w} over f32 keys and values");
    }
}

/// Below AVX-512 the few-rows kernel keeps its sums in tiles of 6 rows, or
/// of 4 where those pad fewer rows (7, 8, 13–16 … rows): every sum is the
/// same chain of fused multiply–adds either way, so a row's outputs are the
/// same bits whichever tile it was in — here, in a product of `m` rows
/// against the same row in a product of 5 (always tiles of 6).
#[test]
fn few_rows_tiles_of_4_and_of_6_agree_bit_for_bit() {
    at_every_level(|level| {
        if !level.fuses_multiply_add() {
            return; // no few-rows kernel at this level
        }
        let (k, n) = (70, 200);
        let w = random(k, n, 5);
        for m in [7, 8, 14, 16, 20, 31, 32] {
            let a = random(m, k, 6 + m as u64);
            let all = matmul(a.view(), w.view());
            for r0 in (0..m).step_by(5) {
                let rows: Vec<usize> = (r0..r0 + 5).map(|r| r % m).collect();
                let five = a.select(ndarray::Axis(0), &rows);
                let part = matmul(five.view(), w.view());
                for (i, &r) in rows.iter().enumerate() {
                    let same = part
                        .row(i)
                        .iter()
                        .zip(all.row(r))
                        .all(|(p, q)| p.to_bits() == q.to_bits());
                    assert!(
                        same,
                        "{m} rows at {level}: row {r} differs from its 5-row product"
                    );
                }
            }
        }
    });
}
