//! The reference tier (`src/reference/`) against PyTorch: every function on the
//! per-op goldens of `python_ref/blocks.py`, and the whole forward pass step by
//! step on the golden model (`python_ref/export_model.py`) and on the seven
//! config variants (`python_ref/variants.py`). Run with `--nocapture` to see
//! the worst difference of each comparison.

mod common;

use std::path::Path;

use common::blocks::{golden, golden1, golden2, golden_scalar};
use common::tensor_names;
use common::{
    assert_close, read_f32, reference_cases, variant_dirs, variant_prompt, variants_manifest, Tol,
    MODEL, SINGLE_OP,
};
use gpt2_ndarray::config::Activation;
use gpt2_ndarray::reference::{
    self, attention_head, attention_scale, conv1d, dot, layer_norm, matmul, mean, merge_heads,
    multi_head_attention, softmax, softmax_rows, split_heads, variance,
};
use gpt2_ndarray::weights::{Conv1D, LayerNorm};
use gpt2_ndarray::{Config, Gpt2};
use ndarray::{arr1, Array, Array2, Dimension};
use serde_json::Value;

// ------------------------------------------------------------------ helpers

/// Compare `got` with the golden `<name>.npy`.
fn check<D: Dimension>(name: &str, got: &Array<f32, D>, tol: Tol) {
    assert_close(
        &format!("reference {name}"),
        got.view().into_dyn(),
        golden(name).view(),
        tol,
    );
}

fn check_scalar(name: &str, got: f32) {
    check(name, &arr1(&[got]), SINGLE_OP);
}

// ------------------------------------------------------------------ dot, matmul, conv1d

#[test]
fn dot_matches_torch_dot() {
    for case in ["dot_1d", "dot_single", "dot_cancel"] {
        let (a, b) = (golden1(&format!("{case}.a")), golden1(&format!("{case}.b")));
        check_scalar(&format!("{case}.out"), dot(a.view(), b.view()));
    }
}

#[test]
fn matmul_matches_torch_and_is_a_dot_per_entry() {
    for case in ["matmul", "matmul_t1"] {
        let (a, b) = (golden2(&format!("{case}.a")), golden2(&format!("{case}.b")));
        let c = matmul(a.view(), b.view());
        check(&format!("{case}.out"), &c, SINGLE_OP);
        let dots = Array2::from_shape_fn(c.dim(), |(i, j)| dot(a.row(i), b.column(j)));
        assert_close(case, c.view().into_dyn(), dots.view().into_dyn(), SINGLE_OP);
    }
}

#[test]
fn conv1d_matches_transformers_conv1d_module() {
    for case in ["conv1d", "conv1d_t1"] {
        let layer = Conv1D {
            weight: golden2(&format!("{case}.weight")).into(),
            bias: golden1(&format!("{case}.bias")),
        };
        let x = golden2(&format!("{case}.x"));
        check(&format!("{case}.out"), &conv1d(x.view(), &layer), SINGLE_OP);
    }
}

// ------------------------------------------------------------------ softmax

#[test]
fn softmax_of_a_vector_matches_torch_even_far_below_zero() {
    for case in ["softmax_1d", "softmax_single", "softmax_1d_all_negative"] {
        let x = golden1(&format!("{case}.x"));
        check(&format!("{case}.out"), &softmax(x.view()), SINGLE_OP);
    }
}

#[test]
fn softmax_of_rows_matches_torch_with_large_equal_and_masked_entries() {
    for case in [
        "softmax_rows",
        "softmax_rows_1e4",
        "softmax_rows_equal",
        "softmax_rows_neg_inf",
    ] {
        let x = golden2(&format!("{case}.x"));
        check(&format!("{case}.out"), &softmax_rows(x.view()), SINGLE_OP);
    }
}

// ------------------------------------------------------------------ mean, variance, layer norm

#[test]
fn mean_and_biased_variance_match_torch() {
    for case in ["mean", "mean_single"] {
        check_scalar(
            &format!("{case}.out"),
            mean(golden1(&format!("{case}.x")).view()),
        );
    }
    for case in ["variance", "variance_single", "variance_offset"] {
        let x = golden1(&format!("{case}.x"));
        check_scalar(&format!("{case}.out"), variance(x.view()));
    }
}

#[test]
fn layer_norm_matches_torch_layer_norm_including_where_eps_dominates() {
    for case in ["layer_norm", "layer_norm_t1", "layer_norm_near_constant"] {
        let ln = LayerNorm {
            weight: golden1(&format!("{case}.weight")),
            bias: golden1(&format!("{case}.bias")),
            eps: golden_scalar(&format!("{case}.eps")),
        };
        let x = golden2(&format!("{case}.x"));
        check(
            &format!("{case}.out"),
            &layer_norm(x.view(), &ln),
            SINGLE_OP,
        );
    }
}

// ------------------------------------------------------------------ activations

/// Every `activation_function` the config accepts, against `ACT2FN[name]` on
/// x in [-10, 10]: through [`reference::activation`] and the scalar function.
#[test]
fn every_activation_the_config_accepts_matches_transformers() {
    let x = golden2("act.x");
    type Scalar = fn(f32) -> f32;
    let cases: [(&str, Scalar); 7] = [
        ("gelu_new", reference::gelu_new),
        ("gelu_pytorch_tanh", reference::gelu_new),
        ("gelu", reference::gelu),
        ("gelu_fast", reference::gelu_fast),
        ("quick_gelu", reference::quick_gelu),
        ("relu", reference::relu),
        ("silu", reference::silu),
    ];
    for (name, f) in cases {
        let act = Activation::from_name(name).unwrap();
        let out = format!("act_{name}.out");
        check(&out, &reference::activation(act, x.view()), SINGLE_OP);
        check(&out, &x.mapv(f), SINGLE_OP);
    }
    assert_eq!(
        Activation::from_name("swish").unwrap(),
        Activation::from_name("silu").unwrap()
    );
}

// ------------------------------------------------------------------ attention

/// One head against `F.scaled_dot_product_attention(is_causal=True)`,
/// including fewer queries than keys (the queries are the last positions).
#[test]
fn one_head_of_causal_attention_matches_torch_sdpa() {
    for case in ["sdpa", "sdpa_t1", "sdpa_tq3_tk7", "sdpa_tq1_tk5"] {
        let [q, k, v] = ["q", "k", "v"].map(|t| golden2(&format!("{case}.{t}")));
        let scale = golden_scalar(&format!("{case}.scale"));
        let head = attention_head(q.view(), k.view(), v.view(), scale);
        check(&format!("{case}.out"), &head.out, SINGLE_OP);
    }
}

/// `split_heads` → `multi_head_attention` → `merge_heads` against per-head
/// torch attention: output, scores (`-inf` where masked) and probabilities.
#[test]
fn multi_head_attention_and_its_maps_match_torch() {
    for (case, n_head) in [
        ("mha", 2),
        ("mha_h3", 3),
        ("mha_t1", 2),
        ("mha_tq3_tk7", 2),
        ("mha_tq1_tk5", 3),
    ] {
        let [q, k, v] =
            ["q", "k", "v"].map(|t| split_heads(golden2(&format!("{case}.{t}")).view(), n_head));
        let scale = golden_scalar(&format!("{case}.scale"));
        let heads = multi_head_attention(q.view(), k.view(), v.view(), scale);
        check(
            &format!("{case}.out"),
            &merge_heads(heads.out.view()),
            SINGLE_OP,
        );
        check(&format!("{case}.scores"), &heads.scores, SINGLE_OP);
        check(&format!("{case}.probs"), &heads.probs, SINGLE_OP);
    }
}

#[test]
fn split_heads_takes_consecutive_columns_and_merge_heads_puts_them_back() {
    let x = Array2::from_shape_fn((3, 6), |(t, c)| (10 * t + c) as f32);
    let heads = split_heads(x.view(), 2); // [2, 3, 3]
    assert_eq!(heads.shape(), [2, 3, 3]);
    assert_eq!(heads[[1, 2, 0]], x[[2, 3]]);
    assert_eq!(merge_heads(heads.view()), x);
}

#[test]
fn attention_scale_follows_the_config_flags() {
    let mut config = Config::gpt2(); // head_dim 64
    assert_eq!(attention_scale(&config, 5), 1.0 / 8.0);
    config.scale_attn_by_inverse_layer_idx = true;
    assert_eq!(attention_scale(&config, 3), 1.0 / 8.0 / 4.0);
    config.scale_attn_weights = false;
    assert_eq!(attention_scale(&config, 3), 1.0 / 4.0);
    config.scale_attn_by_inverse_layer_idx = false;
    config.reorder_and_upcast_attn = true; // where transformers scales, not by how much
    assert_eq!(attention_scale(&config, 3), 1.0);
}

// ------------------------------------------------------------------ the whole model

fn manifest(reference: &Path) -> Value {
    let path = reference.join("manifest.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("manifest.json is JSON")
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect()
}

/// Every step of `reference::forward(model, ids)` against the goldens in
/// `dir`, in forward order (so the first failure is the first step that
/// diverges), after checking that the forward records exactly those names.
fn check_forward(label: &str, model: &Gpt2, ids: &[u32], dir: &Path, names: &[String], tol: Tol) {
    let acts = reference::forward(model, ids);
    let recorded: Vec<&str> = acts.iter().map(|(name, _)| name).collect();
    assert_eq!(recorded, names, "{label}: the steps, in order");
    for name in names {
        let expected = read_f32(dir.join(format!("{name}.npy")));
        let got = acts.get(name).expect("recorded");
        assert_close(
            &format!("reference {label} {name}"),
            got.view(),
            expected.view(),
            tol,
        );
    }
}

/// The golden model (and the bundled trained model, and `GPT2_DIR`), every
/// prompt, every step: transformers' `GPT2LMHeadModel` activation by activation.
#[test]
fn reference_forward_matches_transformers_step_by_step() {
    for case in reference_cases() {
        let manifest = manifest(&case.reference);
        let names = tensor_names(&manifest);
        let model = Gpt2::from_dir(&case.model).expect("load");
        for prompt in manifest["prompts"].as_array().expect("prompts") {
            let dir = case.reference.join(prompt["name"].as_str().expect("name"));
            let label = format!("{} {:?}", case.model.display(), prompt["text"]);
            check_forward(&label, &model, &ids(&prompt["ids"]), &dir, &names, case.tol);
        }
    }
}

/// Each config variant (epsilon, exact gelu, n_inner, inverse-layer scaling,
/// no scaling, untied head, reorder): every step of a 7-token prompt and the
/// logits of a 66-token one against transformers with that config.
#[test]
fn reference_forward_matches_transformers_on_every_config_variant() {
    let manifest = variants_manifest();
    let names = tensor_names(&manifest);
    let (short, long) = (variant_prompt("short"), variant_prompt("long"));
    let variants = variant_dirs();
    assert_eq!(variants.len(), 7);
    for (name, dir) in variants {
        let model = Gpt2::from_dir(&dir).expect("load variant");
        check_forward(&name, &model, &short, &dir.join("short"), &names, MODEL);
        let logits = reference::forward(&model, &long).logits().to_owned();
        let expected = read_f32(dir.join("long/logits.npy"));
        assert_close(
            &format!("reference {name} long logits"),
            logits.view().into_dyn(),
            expected.view(),
            MODEL,
        );
    }
}

/// The variants are not vacuous: each one's field, read back from its
/// `config.json`, differs from GPT-2's default, and the untied head is used.
#[test]
fn each_variant_changes_the_field_it_is_named_for() {
    let default = Config::gpt2();
    for (name, dir) in variant_dirs() {
        let model = Gpt2::from_dir(&dir).expect("load variant");
        let c = &model.config;
        let changed = match name.as_str() {
            "eps" => c.layer_norm_epsilon != default.layer_norm_epsilon,
            "gelu" => c.activation == Activation::Gelu,
            "n_inner" => c.n_inner != 4 * c.n_embd,
            "inv_layer" => c.scale_attn_by_inverse_layer_idx,
            "no_scale" => !c.scale_attn_weights,
            "untied" => !c.tie_word_embeddings && model.lm_head.is_some(),
            "reorder" => c.reorder_and_upcast_attn,
            other => panic!("unknown variant {other}"),
        };
        assert!(changed, "variant {name} has GPT-2's default config");
    }
}

/// The tier's promise, checked on its source: no `unsafe`, no threads, no SIMD
/// crate, no kernel; the weight types come in through one `use` line; the
/// whole-model forward is short.
#[test]
fn reference_tier_uses_no_kernel_no_threads_no_unsafe() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/reference");
    let mut crate_imports = 0;
    for entry in std::fs::read_dir(&root).expect("src/reference") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("source");
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//") && l.trim() != "#![deny(unsafe_code)]")
            .collect::<Vec<_>>()
            .join("\n");
        for word in [
            "unsafe",
            "rayon",
            "multiversion",
            "gemm",
            "fastmath",
            "simd",
            "kernels",
            "blocks",
        ] {
            assert!(!code.contains(word), "{} uses {word:?}", path.display());
        }
        crate_imports += code.matches("use crate::").count();
    }
    assert_eq!(
        crate_imports, 1,
        "one `use crate::` line brings in the weight types"
    );
    let gpt2 = std::fs::read_to_string(root.join("gpt2.rs")).expect("gpt2.rs");
    let start = gpt2.find("pub fn forward(").expect("forward");
    let len = gpt2[start..].find("\n}\n").expect("end of forward");
    let lines = gpt2[start..start + len].lines().count();
    assert!(lines <= 80, "reference::forward is {lines} lines");
}

/// `Gradients::named` lists every parameter of the checkpoint, by its name and
/// shape, once (a tied head is `wte`): the golden model and the untied variant.
#[test]
fn gradient_names_and_shapes_are_the_checkpoints_parameters() {
    use gpt2_ndarray::reference::Gradients;
    let dirs = [
        common::golden_dir().join("model"),
        common::golden_dir().join("variants/untied"),
    ];
    for dir in dirs {
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut expected: Vec<(String, Vec<usize>)> = file
            .tensors()
            .into_iter()
            .map(|(n, t)| {
                (
                    n.trim_start_matches("transformer.").to_string(),
                    t.shape().to_vec(),
                )
            })
            .filter(|(n, _)| !n.ends_with(".attn.bias") && !n.ends_with(".attn.masked_bias"))
            .collect();
        expected.sort();
        let model = Gpt2::from_dir(&dir).unwrap();
        let mut got: Vec<(String, Vec<usize>)> = Gradients::zeros_like(&model)
            .named()
            .into_iter()
            .map(|(n, g)| (n, g.shape().to_vec()))
            .collect();
        got.sort();
        assert_eq!(got, expected, "{}", dir.display());
    }
}
