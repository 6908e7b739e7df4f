//! The backward pass of the reference tier against PyTorch autograd: every box
//! on small inputs, and the whole model's loss and gradient of every parameter
//! on a `[2, 12]` batch of the golden model and of every config variant.
//!
//! Goldens: `golden/grads/`, written by `python_ref/grads.py`.

mod common;

use std::path::PathBuf;

use common::{assert_close, golden_dir, read_f32, Tol};
use gpt2_ndarray::config::Activation;
use gpt2_ndarray::model::BLOCK_PARAMETERS;
use gpt2_ndarray::model::{Attention, Block, Mlp};
use gpt2_ndarray::reference::{
    self, activation_backward, attention_head, attention_head_backward, block, block_backward,
    causal_self_attention, causal_self_attention_backward, conv1d_backward, cross_entropy,
    cross_entropy_backward, embedding_backward, head_backward, layer_norm_backward,
    matmul_backward, mlp, mlp_backward, multi_head_attention, multi_head_attention_backward,
    softmax_rows, softmax_rows_backward,
};
use gpt2_ndarray::weights::{Conv1D, LayerNorm};
use gpt2_ndarray::{Config, Gpt2};
use ndarray::{Array, Array1, Array2, Array3, ArrayD, Dimension, Ix1, Ix2, Ix3};
use serde_json::Value;

/// One box's gradient: a few fp32 operations, each rounded differently from
/// PyTorch's (summation order, the last bit of `exp`/`tanh`/`erf`); the
/// single-op budget of the forward tests.
const BOX: Tol = common::SINGLE_OP;

/// A layer of GPT-2 (`GPT2Attention`, `GPT2MLP`, `GPT2Block`): a dozen
/// operations forward and as many back, each gradient a sum over the
/// positions; rounding differences reach a few times the single-op budget
/// (measured: 2.4x), so ten times it.
const LAYER: Tol = Tol {
    atol: 1e-5,
    rtol: 1e-4,
};

/// A whole model's gradients: the forward's rounding and as much again on the
/// way back, through every layer. Relative 2e-5 on each entry, and absolute
/// 2e-5 of the tensor's largest entry for the entries that are small by
/// cancellation (a gradient is a sum of B·T terms of both signs, so its small
/// entries carry the rounding of its large ones). Measured worst: 1.5e-6 on
/// the golden model's wte projections, 11% of this budget; every other tensor
/// below 9%.
const GRAD_RTOL: f32 = 2e-5;
const GRAD_ATOL_OF_MAX: f32 = 2e-5;

/// The loss: one number, a mean of 24 log-sum-exps of logits that match to 1e-4.
const LOSS: Tol = Tol {
    atol: 1e-5,
    rtol: 1e-5,
};

// ------------------------------------------------------------------ reading the goldens

fn grads_dir() -> PathBuf {
    golden_dir().join("grads")
}

fn manifest() -> Value {
    let path = grads_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (run python3 python_ref/grads.py)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("manifest.json is JSON")
}

/// `golden/grads/blocks/<case>.<tensor>.npy`.
fn golden(case: &str, tensor: &str) -> ArrayD<f32> {
    read_f32(
        grads_dir()
            .join("blocks")
            .join(format!("{case}.{tensor}.npy")),
    )
}

fn golden1(case: &str, tensor: &str) -> Array1<f32> {
    golden(case, tensor)
        .into_dimensionality::<Ix1>()
        .expect(tensor)
}

fn golden2(case: &str, tensor: &str) -> Array2<f32> {
    golden(case, tensor)
        .into_dimensionality::<Ix2>()
        .expect(tensor)
}

fn golden3(case: &str, tensor: &str) -> Array3<f32> {
    golden(case, tensor)
        .into_dimensionality::<Ix3>()
        .expect(tensor)
}

fn scalar(case: &str, tensor: &str) -> f32 {
    let a = golden1(case, tensor);
    assert_eq!(a.len(), 1, "{case}.{tensor} holds one number");
    a[0]
}

/// Ids stored as float32 (exact below 2²⁴).
fn ids(case: &str, tensor: &str) -> Vec<u32> {
    golden1(case, tensor).iter().map(|&v| v as u32).collect()
}

/// Compare `got` with `golden/grads/blocks/<case>.<tensor>.npy`.
fn check<D: Dimension>(case: &str, tensor: &str, got: &Array<f32, D>, tol: Tol) {
    let expected = golden(case, tensor);
    assert_close(
        &format!("{case}.{tensor}"),
        got.view().into_dyn(),
        expected.view(),
        tol,
    );
}

fn layer_norm_of(case: &str, prefix: &str, eps: f32) -> LayerNorm {
    LayerNorm {
        weight: golden1(case, &format!("{prefix}weight")),
        bias: golden1(case, &format!("{prefix}bias")),
        eps,
    }
}

fn conv1d_of(case: &str, prefix: &str) -> Conv1D {
    Conv1D {
        weight: golden2(case, &format!("{prefix}weight")).into(),
        bias: golden1(case, &format!("{prefix}bias")),
    }
}

// ------------------------------------------------------------------ one box at a time

#[test]
fn layer_norm_backward_matches_autograd_including_where_eps_dominates() {
    for case in ["layer_norm", "layer_norm_eps", "layer_norm_t1"] {
        let ln = layer_norm_of(case, "", scalar(case, "eps"));
        let (dx, d_ln) =
            layer_norm_backward(golden2(case, "x").view(), &ln, golden2(case, "dy").view());
        check(case, "d_x", &dx, BOX);
        check(case, "d_weight", &d_ln.weight, BOX);
        check(case, "d_bias", &d_ln.bias, BOX);
    }
}

#[test]
fn matmul_and_conv1d_backward_match_autograd() {
    let case = "matmul";
    let (da, db) = matmul_backward(
        golden2(case, "a").view(),
        golden2(case, "b").view(),
        golden2(case, "dy").view(),
    );
    check(case, "d_a", &da, BOX);
    check(case, "d_b", &db, BOX);

    let case = "conv1d";
    let layer = conv1d_of(case, "");
    let (dx, d_layer) = conv1d_backward(
        golden2(case, "x").view(),
        &layer,
        golden2(case, "dy").view(),
    );
    check(case, "d_x", &dx, BOX);
    check(case, "d_weight", &d_layer.weight, BOX);
    check(case, "d_bias", &d_layer.bias, BOX);
}

#[test]
fn every_activation_backward_matches_autograd() {
    let (x, dy) = (golden2("act", "x"), golden2("act", "dy"));
    for name in [
        "gelu_new",
        "gelu_pytorch_tanh",
        "gelu_fast",
        "gelu",
        "quick_gelu",
        "relu",
        "silu",
        "swish",
    ] {
        let act = Activation::from_name(name).expect(name);
        let dx = activation_backward(act, x.view(), dy.view());
        check(&format!("act_{name}"), "d_x", &dx, BOX);
    }
}

#[test]
fn softmax_backward_matches_autograd_with_masked_peaked_and_equal_rows() {
    let case = "softmax_rows";
    let p = softmax_rows(golden2(case, "x").view());
    check(case, "p", &p, BOX);
    let dx = softmax_rows_backward(p.view(), golden2(case, "dy").view());
    check(case, "d_x", &dx, BOX);
}

#[test]
fn one_head_backward_matches_autograd_with_every_scale_and_cached_keys() {
    for case in ["head", "head_no_scale", "head_inv_layer", "head_cached"] {
        let (q, k, v) = (golden2(case, "q"), golden2(case, "k"), golden2(case, "v"));
        let scale = scalar(case, "scale");
        let head = attention_head(q.view(), k.view(), v.view(), scale);
        let (dq, dk, dv) = attention_head_backward(
            q.view(),
            k.view(),
            v.view(),
            head.probs.view(),
            scale,
            golden2(case, "dout").view(),
        );
        check(case, "d_q", &dq, BOX);
        check(case, "d_k", &dk, BOX);
        check(case, "d_v", &dv, BOX);
    }
}

#[test]
fn multi_head_backward_matches_autograd() {
    let case = "mha";
    let (q, k, v) = (golden3(case, "q"), golden3(case, "k"), golden3(case, "v"));
    let scale = scalar(case, "scale");
    let heads = multi_head_attention(q.view(), k.view(), v.view(), scale);
    let (dq, dk, dv) = multi_head_attention_backward(
        q.view(),
        k.view(),
        v.view(),
        heads.probs.view(),
        scale,
        golden3(case, "dout").view(),
    );
    check(case, "d_q", &dq, BOX);
    check(case, "d_k", &dk, BOX);
    check(case, "d_v", &dv, BOX);
}

/// A config for the per-box cases of GPT-2's own modules, from the manifest.
fn box_config(case: &Value) -> Config {
    let c = &case["config"];
    let flag = |name: &str, default: bool| c[name].as_bool().unwrap_or(default);
    let n_embd = c["n_embd"].as_u64().expect("n_embd") as usize;
    let config = Config {
        vocab_size: 16,
        n_positions: 16,
        n_embd,
        n_layer: 2,
        n_head: c["n_head"].as_u64().expect("n_head") as usize,
        n_inner: c["n_inner"].as_u64().map_or(4 * n_embd, |n| n as usize),
        activation: Activation::from_name(c["activation_function"].as_str().unwrap_or("gelu_new"))
            .expect("activation"),
        layer_norm_epsilon: c["layer_norm_epsilon"].as_f64().unwrap_or(1e-5) as f32,
        scale_attn_weights: flag("scale_attn_weights", true),
        scale_attn_by_inverse_layer_idx: flag("scale_attn_by_inverse_layer_idx", false),
        reorder_and_upcast_attn: flag("reorder_and_upcast_attn", false),
        tie_word_embeddings: true,
    };
    config.validate().expect("a valid config");
    config
}

#[test]
fn attention_layer_backward_matches_gpt2_attention_with_every_scaling_flag() {
    let cases = manifest()["cases"].clone();
    for case in ["attn", "attn_no_scale", "attn_inv_layer", "attn_reorder"] {
        let config = box_config(&cases[case]);
        let layer = cases[case]["layer"].as_u64().expect("layer") as usize;
        let attn = Attention {
            c_attn: conv1d_of(case, "c_attn."),
            c_proj: conv1d_of(case, "c_proj."),
        };
        let x = golden2(case, "x");
        let steps = causal_self_attention(&config, layer, &attn, x.view());
        let (dx, d_c_attn, d_c_proj) = causal_self_attention_backward(
            &config,
            layer,
            &attn,
            x.view(),
            &steps,
            golden2(case, "dy").view(),
        );
        check(case, "d_x", &dx, LAYER);
        check(case, "d_c_attn.weight", &d_c_attn.weight, LAYER);
        check(case, "d_c_attn.bias", &d_c_attn.bias, LAYER);
        check(case, "d_c_proj.weight", &d_c_proj.weight, LAYER);
        check(case, "d_c_proj.bias", &d_c_proj.bias, LAYER);
    }
}

#[test]
fn mlp_and_block_backward_match_gpt2_mlp_and_gpt2_block() {
    let case = "mlp";
    let weights = Mlp {
        c_fc: conv1d_of(case, "c_fc."),
        c_proj: conv1d_of(case, "c_proj."),
    };
    let x = golden2(case, "x");
    let steps = mlp(Activation::GeluNew, &weights, x.view());
    let (dx, d_c_fc, d_c_proj) = mlp_backward(
        Activation::GeluNew,
        &weights,
        x.view(),
        &steps,
        golden2(case, "dy").view(),
    );
    check(case, "d_x", &dx, LAYER);
    check(case, "d_c_fc.weight", &d_c_fc.weight, LAYER);
    check(case, "d_c_fc.bias", &d_c_fc.bias, LAYER);
    check(case, "d_c_proj.weight", &d_c_proj.weight, LAYER);
    check(case, "d_c_proj.bias", &d_c_proj.bias, LAYER);

    let case = "block";
    let about = &manifest()["cases"][case];
    let config = box_config(about);
    let layer = about["layer"].as_u64().expect("layer") as usize;
    let eps = config.layer_norm_epsilon;
    let weights = Block {
        ln_1: layer_norm_of(case, "ln_1.", eps),
        attn: Attention {
            c_attn: conv1d_of(case, "attn.c_attn."),
            c_proj: conv1d_of(case, "attn.c_proj."),
        },
        ln_2: layer_norm_of(case, "ln_2.", eps),
        mlp: Mlp {
            c_fc: conv1d_of(case, "mlp.c_fc."),
            c_proj: conv1d_of(case, "mlp.c_proj."),
        },
    };
    let x = golden2(case, "x");
    let steps = block(&config, layer, &weights, x.view());
    let (dx, d_block) = block_backward(
        &config,
        layer,
        &weights,
        x.view(),
        &steps,
        golden2(case, "dy").view(),
    );
    check(case, "d_x", &dx, LAYER);
    let got = [
        d_block.ln_1.weight.view().into_dyn(),
        d_block.ln_1.bias.view().into_dyn(),
        d_block.c_attn.weight.view().into_dyn(),
        d_block.c_attn.bias.view().into_dyn(),
        d_block.attn_c_proj.weight.view().into_dyn(),
        d_block.attn_c_proj.bias.view().into_dyn(),
        d_block.ln_2.weight.view().into_dyn(),
        d_block.ln_2.bias.view().into_dyn(),
        d_block.c_fc.weight.view().into_dyn(),
        d_block.c_fc.bias.view().into_dyn(),
        d_block.mlp_c_proj.weight.view().into_dyn(),
        d_block.mlp_c_proj.bias.view().into_dyn(),
    ];
    for (name, g) in BLOCK_PARAMETERS.iter().zip(got) {
        let expected = golden(case, &format!("d_{name}"));
        assert_close(&format!("block.d_{name}"), g, expected.view(), LAYER);
    }
}

#[test]
fn embedding_and_head_backward_match_autograd() {
    let case = "embedding";
    let (wte, wpe) = (golden2(case, "wte"), golden2(case, "wpe"));
    let (mut d_wte, mut d_wpe) = (Array2::zeros(wte.dim()), Array2::zeros(wpe.dim()));
    embedding_backward(
        &ids(case, "ids"),
        golden2(case, "dy").view(),
        d_wte.view_mut(),
        d_wpe.view_mut(),
    );
    check(case, "d_wte", &d_wte, BOX);
    check(case, "d_wpe", &d_wpe, BOX);

    let case = "head";
    let w = golden2(case, "weight");
    let (dx, dw) = head_backward(
        golden2(case, "x").view(),
        w.view(),
        None,
        golden2(case, "dlogits").view(),
    );
    check(case, "d_x", &dx, BOX);
    check(case, "d_weight", &dw, BOX);
    // an untied head takes the same path through its own matrix
    let zeros = Array2::zeros(w.dim());
    let (dx_untied, dw_untied) = head_backward(
        golden2(case, "x").view(),
        zeros.view(),
        Some(w.view()),
        golden2(case, "dlogits").view(),
    );
    assert_eq!((dx_untied, dw_untied), (dx, dw));
}

#[test]
fn cross_entropy_and_its_gradient_match_torch_even_for_huge_logits() {
    for case in ["cross_entropy", "cross_entropy_large"] {
        let (logits, targets) = (golden2(case, "logits"), ids(case, "targets"));
        let loss = cross_entropy(logits.view(), &targets);
        check(case, "loss", &Array1::from_elem(1, loss), BOX);
        check(
            case,
            "d_logits",
            &cross_entropy_backward(logits.view(), &targets),
            BOX,
        );
    }
}

// ------------------------------------------------------------------ the whole model

fn batch(value: &Value) -> Array2<u32> {
    let rows: Vec<Vec<u32>> = value
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_u64().expect("id") as u32)
                .collect()
        })
        .collect();
    let (b, t) = (rows.len(), rows[0].len());
    Array2::from_shape_vec((b, t), rows.concat()).expect("[B, T]")
}

/// The tolerance for one whole-model gradient: see [`GRAD_RTOL`].
fn grad_tol(expected_max: f32) -> Tol {
    Tol {
        atol: GRAD_ATOL_OF_MAX * expected_max,
        rtol: GRAD_RTOL,
    }
}

fn max_abs(x: ndarray::ArrayViewD<f32>) -> f32 {
    x.fold(0.0, |m, &v| m.max(v.abs()))
}

/// The sampled rows and the ±1 projections of a `wte` gradient too big to store.
fn check_wte_sample(
    label: &str,
    got: ndarray::ArrayViewD<f32>,
    sample: &Value,
    dir: &std::path::Path,
) {
    let got = got.into_dimensionality::<Ix2>().expect("wte is [vocab, C]");
    let rows: Vec<usize> = sample["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|v| v.as_u64().expect("row") as usize)
        .collect();
    let expected_rows = read_f32(dir.join("wte.weight.rows.npy"));
    let got_rows = got.select(ndarray::Axis(0), &rows);
    // The largest entry of the whole gradient lies in a sampled row (python_ref/grads.py asserts
    // it: the batch's rows hold the embedding's terms and the targets' -1s), so the absolute
    // budget is the same as for a tensor stored whole.
    let tol = grad_tol(max_abs(expected_rows.view()));
    assert_close(
        &format!("{label} wte.weight (rows {})", rows.len()),
        got_rows.view().into_dyn(),
        expected_rows.view(),
        tol,
    );

    // R·G over every row, R[i, v] = ±1 from splitmix64 (python_ref/grads.py), in f64
    let expected = read_f32(dir.join("wte.weight.projections.npy"))
        .into_dimensionality::<Ix2>()
        .expect("[8, C]");
    let (vocab, c) = got.dim();
    let mut projected = Array2::<f64>::zeros(expected.dim());
    for i in 0..expected.nrows() {
        for v in 0..vocab {
            let sign = if splitmix64((i * vocab + v) as u64) >> 63 == 0 {
                1.0
            } else {
                -1.0
            };
            for j in 0..c {
                projected[[i, j]] += sign * f64::from(got[[v, j]]);
            }
        }
    }
    // Each entry of R·G is a ±1 sum over all 50257 rows: its size is about ‖G[:, j]‖ (the
    // column's norm, in the manifest), and so is the size of its rounding differences, times
    // the per-entry error. The budget: GRAD_RTOL relative, GRAD_ATOL_OF_MAX of the largest
    // column norm absolute.
    let norms: Vec<f32> = sample["column_norms"]
        .as_array()
        .expect("column_norms")
        .iter()
        .map(|v| v.as_f64().expect("norm") as f32)
        .collect();
    let budget = GRAD_ATOL_OF_MAX * norms.iter().cloned().fold(0.0, f32::max);
    assert_close(
        &format!("{label} wte.weight projections"),
        projected.mapv(|v| v as f32).view().into_dyn(),
        expected.view().into_dyn(),
        Tol {
            atol: budget,
            rtol: GRAD_RTOL,
        },
    );
}

/// SplitMix64, as `python_ref/grads.py` writes the projection matrix with it.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `loss_and_gradients` on the batch of `golden/grads/manifest.json`'s model
/// `key` against PyTorch's loss and every gradient, by state-dict name.
fn check_model(key: &str) {
    let manifest = manifest();
    let entry = &manifest["models"][key];
    let model_dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(entry["dir"].as_str().expect("dir"));
    let model = Gpt2::from_dir(&model_dir).expect("load the model");
    let (inputs, targets) = (batch(&entry["inputs"]), batch(&entry["targets"]));
    let (loss, grads) = reference::loss_and_gradients(&model, inputs.view(), targets.view());

    let expected_loss = entry["loss"].as_f64().expect("loss") as f32;
    assert_close(
        &format!("{key} loss"),
        Array1::from_elem(1, loss).view().into_dyn(),
        Array1::from_elem(1, expected_loss).view().into_dyn(),
        LOSS,
    );

    let named = grads.named();
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    let expected_names: Vec<&str> = entry["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|v| v.as_str().expect("name"))
        .collect();
    assert_eq!(names, expected_names, "{key}: the parameters, in order");

    let dir = grads_dir().join(key);
    for (name, got) in named {
        if name == "wte.weight" && !entry["wte_sample"].is_null() {
            check_wte_sample(key, got, &entry["wte_sample"], &dir);
            continue;
        }
        let expected = read_f32(dir.join(format!("{name}.npy")));
        let tol = grad_tol(max_abs(expected.view()));
        assert_close(&format!("{key} {name}"), got, expected.view(), tol);
    }
}

#[test]
fn loss_and_every_gradient_of_the_golden_model_match_pytorch() {
    check_model("model");
}

#[test]
fn loss_and_every_gradient_of_every_config_variant_match_pytorch() {
    let manifest = manifest();
    let keys: Vec<String> = manifest["models"]
        .as_object()
        .expect("models")
        .keys()
        .filter(|k| k.starts_with("variants/"))
        .cloned()
        .collect();
    assert_eq!(
        keys.len(),
        common::variant_dirs().len(),
        "every variant has gradients"
    );
    for key in keys {
        check_model(&key);
    }
}
