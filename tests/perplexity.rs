//! Perplexity over sliding windows equals transformers' on the same tokens.

mod common;

use std::path::Path;

use common::golden_dir;
use gpt2_ndarray::{perplexity::perplexity, Gpt2};
use serde_json::Value;

/// Summing a few hundred f64 NLLs of fp32 logits: the logits differ from
/// PyTorch's by ~1e-6 relative, so the mean NLL does too; 1e-4 is the bound
/// the issue states.
const RTOL: f64 = 1e-4;

fn check(model_dir: &Path, reference: &Path) {
    let text =
        std::fs::read_to_string(reference).expect("perplexity.json (run python_ref/perplexity.py)");
    let golden: Value = serde_json::from_str(&text).expect("json");
    let ids: Vec<u32> = golden["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let model = Gpt2::from_dir(model_dir).expect("model");
    for case in golden["cases"].as_array().expect("cases") {
        let stride = case["stride"].as_u64().unwrap() as usize;
        let got = perplexity(&model, &ids, stride, |_, _| {}).expect("perplexity");
        let expected = case["mean_nll"].as_f64().unwrap();
        assert_eq!(
            got.tokens as u64,
            case["tokens"].as_u64().unwrap(),
            "tokens scored, stride {stride}"
        );
        let rel = (got.mean_nll() - expected).abs() / expected;
        assert!(
            rel <= RTOL,
            "{}: stride {stride}: mean NLL {} vs transformers {expected} (relative error {rel:.2e})",
            model_dir.display(),
            got.mean_nll()
        );
    }
}

#[test]
fn perplexity_of_the_golden_model_matches_transformers_with_and_without_overlap() {
    check(
        &golden_dir().join("model"),
        &golden_dir().join("reference/perplexity.json"),
    );
}

#[test]
fn perplexity_of_the_trained_model_matches_transformers_on_validation_text() {
    let reference = golden_dir().join("kjv-gpt2/perplexity.json");
    if reference.is_file() {
        check(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("models/kjv-gpt2"),
            &reference,
        );
    }
}
