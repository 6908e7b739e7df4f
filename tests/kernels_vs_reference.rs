//! Every kernel that is not a matrix product against its reference twin
//! (`tests/kernels.rs` does the products): layer norm, softmax, the
//! activations, the linear layer and multi-head attention, on random inputs
//! whose sizes cross every threshold where a kernel changes strategy:
//!
//! - rows 1, 4, 5, 6, 31, 32, 33, 63, 64, 65, 130 (and 1024 where it is
//!   cheap): the matrix–vector path (≤ 4 rows), the few-rows kernel (5–32),
//!   the GEMM (more), rayon's minimum chunk lengths, attention's blocks of 64
//!   queries;
//! - widths that are not multiples of 8 or 16 (the SIMD lanes' tails);
//! - strided and transposed views (the kernels copy or fall back);
//! - fewer queries than keys (a KV cache: decoding one token over 1023 cached
//!   ones) and left-padded keys (a padded batch).
//!
//! The budget is [`SINGLE_OP`]: the kernels sum in another order and use a
//! vectorisable `exp`, a few ulp apart from the reference.

mod common;

use common::{assert_close, Tol, SINGLE_OP};
use gpt2_ndarray::config::Activation;
use gpt2_ndarray::generate::Rng;
use gpt2_ndarray::kernels;
use gpt2_ndarray::reference;
use gpt2_ndarray::weights::{Conv1D, LayerNorm};
use ndarray::{s, Array1, Array2, Axis};

const ROWS: [usize; 11] = [1, 4, 5, 6, 31, 32, 33, 63, 64, 65, 130];

fn random(rows: usize, cols: usize, spread: f64, rng: &mut Rng) -> Array2<f32> {
    Array2::from_shape_fn((rows, cols), |_| {
        ((rng.next_f64() * 2.0 - 1.0) * spread) as f32
    })
}

fn check(name: &str, got: &Array2<f32>, expected: &Array2<f32>, tol: Tol) {
    assert_close(name, got.view().into_dyn(), expected.view().into_dyn(), tol);
}

#[test]
fn layer_norm_kernel_equals_reference_layer_norm() {
    let mut rng = Rng::new(1);
    for &t in ROWS.iter().chain(&[1024]) {
        for c in [7, 48, 769] {
            let ln = LayerNorm {
                weight: random(1, c, 2.0, &mut rng).row(0).to_owned(),
                bias: random(1, c, 1.0, &mut rng).row(0).to_owned(),
                eps: 1e-5,
            };
            // Rows whose mean is not 0. (A large offset such as 100 would
            // test the conditioning of fp32, not the kernel: x − μ then
            // loses the digits below ulp(100) in any implementation.)
            let x = random(t, c, 3.0, &mut rng) + 1.5;
            let name = format!("layer_norm T={t} C={c}");
            let expected = reference::layer_norm(x.view(), &ln);
            check(
                &name,
                &kernels::layer_norm(x.view(), &ln),
                &expected,
                SINGLE_OP,
            );
            // The same rows as a transposed view (column-major, strided rows).
            let xt = x.t().to_owned();
            let name = format!("layer_norm of a transposed view T={t} C={c}");
            check(
                &name,
                &kernels::layer_norm(xt.t(), &ln),
                &expected,
                SINGLE_OP,
            );
        }
    }
}

#[test]
fn softmax_kernel_equals_reference_softmax() {
    let mut rng = Rng::new(2);
    for n in [1, 2, 7, 15, 16, 17, 63, 64, 65, 1024, 50257] {
        let mut x = random(1, n, 20.0, &mut rng).row(0).to_owned();
        // Masked entries, as attention and top-k filtering make them.
        for i in (0..n).skip(1).step_by(3) {
            x[i] = f32::NEG_INFINITY;
        }
        let expected = reference::softmax(x.view()).insert_axis(Axis(0));
        let got = kernels::softmax(x.view()).insert_axis(Axis(0));
        check(&format!("softmax n={n}"), &got, &expected, SINGLE_OP);
        // In place on a strided view (every other entry of a longer vector).
        let mut wide = Array1::zeros(2 * n);
        wide.slice_mut(s![..;2]).assign(&x);
        kernels::softmax_inplace(wide.slice_mut(s![..;2]));
        let got = wide.slice(s![..;2]).to_owned().insert_axis(Axis(0));
        check(
            &format!("softmax_inplace strided n={n}"),
            &got,
            &expected,
            SINGLE_OP,
        );
    }
}

#[test]
fn every_activation_kernel_equals_its_reference_formula() {
    let mut rng = Rng::new(3);
    for act in [
        Activation::GeluNew,
        Activation::GeluFast,
        Activation::Gelu,
        Activation::QuickGelu,
        Activation::Relu,
        Activation::Silu,
    ] {
        for (t, n) in [(1, 7), (5, 3072), (33, 17), (130, 100)] {
            let x = random(t, n, 12.0, &mut rng);
            let expected = reference::activation(act, x.view());
            let mut got = x.clone();
            act.apply_inplace(got.view_mut());
            check(&format!("{act:?} [{t}, {n}]"), &got, &expected, SINGLE_OP);
            // A strided view: every other column.
            let mut wide = Array2::zeros((t, 2 * n));
            wide.slice_mut(s![.., ..;2]).assign(&x);
            act.apply_inplace(wide.slice_mut(s![.., ..;2]));
            let got = wide.slice(s![.., ..;2]).to_owned();
            check(
                &format!("{act:?} strided [{t}, {n}]"),
                &got,
                &expected,
                SINGLE_OP,
            );
        }
    }
}

#[test]
fn conv1d_kernel_equals_reference_conv1d_across_row_thresholds() {
    let mut rng = Rng::new(4);
    for &t in &ROWS {
        for (n_in, n_out) in [(48, 144), (37, 53)] {
            let layer = Conv1D {
                weight: random(n_in, n_out, 1.0, &mut rng).into(),
                bias: random(1, n_out, 1.0, &mut rng).row(0).to_owned(),
            };
            let x = random(t, n_in, 1.0, &mut rng);
            let tol = Tol {
                atol: 1e-6 * n_in as f32,
                rtol: 1e-5,
            };
            check(
                &format!("conv1d T={t} [{n_in}, {n_out}]"),
                &kernels::conv1d(x.view(), &layer),
                &reference::conv1d(x.view(), &layer),
                tol,
            );
        }
    }
}

/// The reference's multi-head attention of `[T, C]` projections, merged back
/// to `[Tq, C]`, with its scores and probabilities `[n_head, Tq, Tk]`.
fn reference_attention(
    q: &Array2<f32>,
    k: &Array2<f32>,
    v: &Array2<f32>,
    n_head: usize,
    scale: f32,
) -> reference::Heads {
    let [q, k, v] = [q, k, v].map(|x| reference::split_heads(x.view(), n_head));
    reference::multi_head_attention(q.view(), k.view(), v.view(), scale)
}

fn check_attention(label: &str, tq: usize, tk: usize, pad: usize, rng: &mut Rng) {
    let (n_head, d) = (3, 12);
    let c = n_head * d;
    let scale = 1.0 / (d as f32).sqrt();
    let (q, k, v) = (
        random(tq, c, 2.0, rng),
        random(tk, c, 2.0, rng),
        random(tk, c, 1.0, rng),
    );
    // Left padding: the first `pad` keys are not real tokens. The reference
    // sees the sequence without them (the real keys keep their positions
    // relative to the queries, which are the last `tq`).
    // Queries at padding positions themselves (the first `first`) attend to
    // nothing real and are not compared.
    let mask = Array1::from_shape_fn(tk, |j| j >= pad);
    let key_mask = (pad > 0).then_some(mask.view());
    let first = tq.saturating_sub(tk - pad);
    let real_rows = |x: &Array2<f32>| x.slice(s![first.., ..]).to_owned();
    let real_keys = |x: &Array2<f32>| x.slice(s![pad.., ..]).to_owned();
    let expected = reference_attention(
        &real_rows(&q),
        &real_keys(&k),
        &real_keys(&v),
        n_head,
        scale,
    );
    let merged = reference::merge_heads(expected.out.view());

    let name = format!("{label}: attend Tq={tq} Tk={tk} pad={pad}");
    let (got, _) = kernels::attend(q.view(), k.view(), v.view(), n_head, scale, key_mask, false);
    check(&name, &real_rows(&got), &merged, SINGLE_OP);

    let (got, maps) = kernels::attend(q.view(), k.view(), v.view(), n_head, scale, key_mask, true);
    let maps = maps.expect("maps were asked for");
    check(
        &format!("{name} (with maps)"),
        &real_rows(&got),
        &merged,
        SINGLE_OP,
    );
    let real = s![.., first.., pad..];
    for (what, got, want) in [
        ("scores", &maps.scores, &expected.scores),
        ("probs", &maps.probs, &expected.probs),
    ] {
        assert_close(
            &format!("{name} {what}"),
            got.slice(real).into_dyn(),
            want.view().into_dyn(),
            SINGLE_OP,
        );
    }
    // Padding keys get no weight at all.
    assert!(
        maps.probs
            .slice(s![.., .., ..pad])
            .iter()
            .all(|&p| p == 0.0),
        "{name}: a padding key got attention"
    );
}

#[test]
fn attention_kernel_equals_reference_across_query_blocks() {
    let mut rng = Rng::new(5);
    for &t in &ROWS {
        check_attention("a prompt", t, t, 0, &mut rng);
    }
}

#[test]
fn attention_kernel_equals_reference_over_a_cache() {
    let mut rng = Rng::new(6);
    // Decoding (a few queries after many cached keys) and a chunked prompt
    // (a block of queries over a non-empty cache).
    for (tq, tk) in [(1, 1), (1, 1024), (4, 37), (5, 70), (33, 97), (65, 130)] {
        check_attention("over a cache", tq, tk, 0, &mut rng);
    }
}

#[test]
fn attention_kernel_equals_reference_with_left_padding() {
    let mut rng = Rng::new(7);
    for (tq, tk, pad) in [(6, 6, 2), (65, 65, 3), (1, 40, 7), (33, 33, 32)] {
        check_attention("left-padded", tq, tk, pad, &mut rng);
    }
}
