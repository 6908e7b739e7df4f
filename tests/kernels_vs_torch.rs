//! The fast kernels against PyTorch directly, one claim per test (their
//! reference twins face the same golden files in `tests/reference.rs`, and
//! the kernels face the twins in `tests/kernels.rs`).
//!
//! The golden files `golden/blocks/<case>.<tensor>.npy` (inputs and PyTorch's
//! outputs) come from `python3 python_ref/blocks.py`; run with `--nocapture` to see
//! the worst difference of each comparison.

mod common;

use common::blocks::{golden, golden1, golden2, golden_scalar};
use common::{assert_close, golden_dir, Tol, SINGLE_OP};
use gpt2_ndarray::config::Activation;
use gpt2_ndarray::kernels::activation as kernel;
use gpt2_ndarray::kernels::norm::{mean, variance};
use gpt2_ndarray::kernels::{attend, conv1d, layer_norm, matmul, softmax, softmax_inplace};
use gpt2_ndarray::weights::{Conv1D, LayerNorm};
use ndarray::{arr1, Array, Dimension};

// ------------------------------------------------------------------ helpers

/// Compare `got` with the golden `<name>.npy`.
fn check<D: Dimension>(name: &str, got: &Array<f32, D>, tol: Tol) {
    assert_close(name, got.view().into_dyn(), golden(name).view(), tol);
}

fn check_scalar(name: &str, got: f32, tol: Tol) {
    check(name, &arr1(&[got]), tol);
}

fn conv1d_layer(case: &str) -> Conv1D {
    let weight = golden2(&format!("{case}.weight"));
    let bias = golden1(&format!("{case}.bias"));
    Conv1D {
        weight: weight.into(),
        bias,
    }
}

fn layer_norm_params(case: &str) -> LayerNorm {
    LayerNorm {
        weight: golden1(&format!("{case}.weight")),
        bias: golden1(&format!("{case}.bias")),
        eps: golden_scalar(&format!("{case}.eps")),
    }
}

// ------------------------------------------------------------------ matmul, Conv1D

fn check_matmul(case: &str) {
    let (a, b) = (golden2(&format!("{case}.a")), golden2(&format!("{case}.b")));
    check(
        &format!("{case}.out"),
        &matmul(a.view(), b.view()),
        SINGLE_OP,
    );
}

#[test]
fn matmul_of_non_square_matrices_matches_torch() {
    check_matmul("matmul"); // [3, 5] @ [5, 4]
}

#[test]
fn matmul_of_a_single_row_matches_torch() {
    check_matmul("matmul_t1"); // [1, 6] @ [6, 2]
}

fn check_conv1d(case: &str) {
    let (x, layer) = (golden2(&format!("{case}.x")), conv1d_layer(case));
    let out = format!("{case}.out");
    check(&out, &conv1d(x.view(), &layer), SINGLE_OP);
}

#[test]
fn conv1d_linear_matches_transformers_conv1d_module() {
    check_conv1d("conv1d"); // x [4, 6], W [6, 10]
    let layer = conv1d_layer("conv1d");
    assert_eq!((layer.n_in(), layer.n_out()), (6, 10));
}

#[test]
fn conv1d_linear_of_one_token_matches_transformers_conv1d_module() {
    check_conv1d("conv1d_t1"); // x [1, 6], W [6, 3]
}

// ------------------------------------------------------------------ softmax

fn check_softmax_1d(case: &str) {
    let x = golden1(&format!("{case}.x"));
    check(&format!("{case}.out"), &softmax(x.view()), SINGLE_OP);
}

fn check_softmax_rows(case: &str) {
    let x = golden2(&format!("{case}.x"));
    let out = format!("{case}.out");
    let mut in_place = x.clone();
    in_place.rows_mut().into_iter().for_each(softmax_inplace);
    check(&out, &in_place, SINGLE_OP);
}

#[test]
fn softmax_of_a_vector_matches_torch() {
    check_softmax_1d("softmax_1d");
}

#[test]
fn softmax_of_a_single_element_is_one() {
    check_softmax_1d("softmax_single");
}

#[test]
fn softmax_of_a_vector_far_below_zero_matches_torch() {
    check_softmax_1d("softmax_1d_all_negative"); // [-1000, -1001, ...]
}

#[test]
fn softmax_of_rows_matches_torch() {
    check_softmax_rows("softmax_rows");
}

#[test]
fn softmax_of_rows_with_1e4_magnitudes_matches_torch() {
    check_softmax_rows("softmax_rows_1e4");
}

#[test]
fn softmax_of_all_equal_rows_is_uniform() {
    check_softmax_rows("softmax_rows_equal");
}

#[test]
fn softmax_of_partially_masked_rows_gives_neg_inf_zero_probability() {
    check_softmax_rows("softmax_rows_neg_inf");
}

// ------------------------------------------------------------------ mean, variance, layer norm

#[test]
fn mean_matches_torch() {
    check_scalar("mean.out", mean(golden1("mean.x").view()), SINGLE_OP);
}

#[test]
fn mean_of_one_element_is_that_element() {
    check_scalar(
        "mean_single.out",
        mean(golden1("mean_single.x").view()),
        SINGLE_OP,
    );
}

#[test]
fn biased_variance_matches_torch_var_unbiased_false() {
    check_scalar(
        "variance.out",
        variance(golden1("variance.x").view()),
        SINGLE_OP,
    );
}

#[test]
fn biased_variance_of_one_element_is_zero() {
    let x = golden1("variance_single.x");
    check_scalar("variance_single.out", variance(x.view()), SINGLE_OP);
}

#[test]
fn variance_of_values_near_1000_with_spread_0_1_matches_torch() {
    let x = golden1("variance_offset.x");
    check_scalar("variance_offset.out", variance(x.view()), SINGLE_OP);
}

fn check_layer_norm(case: &str) {
    let (x, ln) = (golden2(&format!("{case}.x")), layer_norm_params(case));
    check(
        &format!("{case}.out"),
        &layer_norm(x.view(), &ln),
        SINGLE_OP,
    );
}

#[test]
fn layer_norm_matches_torch_layer_norm() {
    check_layer_norm("layer_norm"); // [5, 12], eps 1e-5
}

#[test]
fn layer_norm_of_one_row_matches_torch_layer_norm() {
    check_layer_norm("layer_norm_t1"); // [1, 7], eps 1e-6
}

#[test]
fn layer_norm_of_near_constant_rows_where_eps_dominates_matches_torch() {
    check_layer_norm("layer_norm_near_constant"); // variance ~1e-9, eps 1e-5
}

// ------------------------------------------------------------------ activations

/// The kernel `Activation::apply_inplace` and the scalar function `f` both
/// against `ACT2FN[name]` on x in [-10, 10] (including 0 and ±1e-3).
fn check_activation(name: &str, f: fn(f32) -> f32) {
    let x = golden2("act.x");
    let out = format!("act_{name}.out");
    let act = Activation::from_name(name).unwrap();
    let mut y = x.clone();
    act.apply_inplace(y.view_mut());
    check(&out, &y, SINGLE_OP);
    check(&out, &x.mapv(f), SINGLE_OP);
}

#[test]
fn gelu_new_matches_transformers() {
    check_activation("gelu_new", kernel::gelu_new);
}

#[test]
fn gelu_pytorch_tanh_is_gelu_new_and_matches_transformers() {
    check_activation("gelu_pytorch_tanh", kernel::gelu_new);
}

#[test]
fn exact_erf_gelu_matches_transformers() {
    check_activation("gelu", kernel::gelu);
}

#[test]
fn gelu_fast_matches_transformers() {
    check_activation("gelu_fast", kernel::gelu_fast);
}

#[test]
fn quick_gelu_matches_transformers() {
    check_activation("quick_gelu", kernel::quick_gelu);
}

#[test]
fn relu_matches_transformers() {
    check_activation("relu", kernel::relu);
}

#[test]
fn silu_matches_transformers() {
    check_activation("silu", kernel::silu);
}

// ------------------------------------------------------------------ attention

/// `attend` without and with the maps (output, scores, probabilities) of
/// `case` with `n_head` heads, against per-head `F.scaled_dot_product_attention`.
fn check_mha(case: &str, n_head: usize) {
    let [q, k, v] = ["q", "k", "v"].map(|t| golden2(&format!("{case}.{t}")));
    let scale = golden_scalar(&format!("{case}.scale"));
    let key_mask = golden_dir()
        .join("blocks")
        .join(format!("{case}.key_mask.npy"))
        .is_file()
        .then(|| golden1(&format!("{case}.key_mask")).mapv(|m| m != 0.0));
    let key_mask = key_mask.as_ref().map(|m| m.view());
    let (q, k, v) = (q.view(), k.view(), v.view());

    let (out, _) = attend(q, k, v, n_head, scale, key_mask, false);
    check(&format!("{case}.out"), &out, SINGLE_OP);

    let (out, maps) = attend(q, k, v, n_head, scale, key_mask, true);
    let maps = maps.expect("maps were asked for");
    check(&format!("{case}.out"), &out, SINGLE_OP);
    check(&format!("{case}.scores"), &maps.scores, SINGLE_OP); // -inf where masked
    check(&format!("{case}.probs"), &maps.probs, SINGLE_OP);
}

#[test]
fn two_head_attention_and_its_maps_match_torch() {
    check_mha("mha", 2); // T 5, C 8
}

#[test]
fn three_head_attention_and_its_maps_match_torch() {
    check_mha("mha_h3", 3); // T 4, C 6
}

#[test]
fn multi_head_attention_of_a_single_token_matches_torch() {
    check_mha("mha_t1", 2); // T 1, C 6
}

#[test]
fn multi_head_attention_of_3_queries_against_7_keys_matches_torch() {
    check_mha("mha_tq3_tk7", 2); // C 10
}

#[test]
fn multi_head_attention_of_1_query_against_5_keys_matches_torch() {
    check_mha("mha_tq1_tk5", 3); // C 12
}

#[test]
fn multi_head_attention_with_right_padding_masked_matches_torch() {
    check_mha("mha_key_mask", 2); // keys 4, 5 are padding
}
