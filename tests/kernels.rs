//! The fast matrix products against their plain twin (`matmul_naive`), for
//! every path: few rows × row-contiguous matrix, few rows × column-contiguous
//! matrix (a transposed view), many rows (tiled GEMM), odd sizes and strides.
//! And the results must not depend on the thread count, bit for bit.

mod common;

use common::{assert_close, Tol};
use gpt2_ndarray::blocks::{matmul, matmul_naive};
use gpt2_ndarray::generate::Rng;
use ndarray::{s, Array2};

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
    // (m, k, n): GEMV sizes (m <= 4) with k not a multiple of 4 or 16, and GEMM
    // sizes crossing the 256-row and 128-column tiles.
    for (m, k, n) in [
        (1, 7, 5),
        (1, 768, 300),
        (3, 37, 513),
        (4, 16, 16),
        (5, 9, 3),
        (300, 70, 260),
    ] {
        let a = random(m, k, 1);
        let b = random(k, n, 2);
        let name = format!("[{m},{k}]·[{k},{n}]");
        let expected = matmul_naive(a.view(), b.view());
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
        let expected = matmul_naive(a.view(), b_slice);
        assert_close(
            &format!("{name} strided"),
            matmul(a.view(), b_slice).view().into_dyn(),
            expected.view().into_dyn(),
            tol(k),
        );
    }
}

#[test]
fn matmul_results_do_not_depend_on_the_thread_count() {
    for (m, k, n) in [(1, 768, 2304), (2, 300, 1000), (260, 96, 400)] {
        let a = random(m, k, 4);
        let b = random(k, n, 5);
        let bt = b.t().as_standard_layout().into_owned();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| (matmul(a.view(), b.view()), matmul(a.view(), bt.t())))
        };
        let one = run(1);
        for threads in [2, 3, 4] {
            assert_eq!(
                run(threads),
                one,
                "[{m},{k}]·[{k},{n}] with {threads} threads"
            );
        }
    }
}
