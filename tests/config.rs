//! `config.json` parsing: every released GPT-2 size from its own file, the
//! defaults of old files, and clear errors for bad ones.

use gpt2_ndarray::config::Activation;
use gpt2_ndarray::Config;

/// `config.json` of openai-community/gpt2 as published (2019: `n_ctx`, no `n_inner`).
const GPT2: &str = r#"{
  "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
  "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
  "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": null,
  "summary_first_dropout": 0.1, "summary_proj_to_labels": true, "summary_type": "cls_index",
  "summary_use_proj": true, "task_specific_params": {"text-generation": {"do_sample": true, "max_length": 50}},
  "vocab_size": 50257
}"#;

fn sized(n_embd: usize, n_layer: usize, n_head: usize) -> String {
    GPT2.replace("\"n_embd\": 768", &format!("\"n_embd\": {n_embd}"))
        .replace("\"n_layer\": 12", &format!("\"n_layer\": {n_layer}"))
        .replace("\"n_head\": 12", &format!("\"n_head\": {n_head}"))
}

#[test]
fn every_released_size_parses_to_its_constructor_and_parameter_count() {
    // (file, constructor, parameters as `model.num_parameters()` reports them)
    let sizes = [
        (sized(768, 12, 12), Config::gpt2(), 124_439_808),
        (sized(1024, 24, 16), Config::gpt2_medium(), 354_823_168),
        (sized(1280, 36, 20), Config::gpt2_large(), 774_030_080),
        (sized(1600, 48, 25), Config::gpt2_xl(), 1_557_611_200),
        (sized(768, 6, 12), Config::distilgpt2(), 81_912_576),
    ];
    for (json, expected, params) in sizes {
        let config = Config::from_json(&json).expect("parse");
        assert_eq!(config, expected);
        assert_eq!(config.num_parameters(), params, "{json}");
        assert_eq!(config.n_inner, 4 * config.n_embd);
    }
}

#[test]
fn old_files_get_transformers_defaults() {
    let c = Config::from_json(GPT2).unwrap();
    assert!(c.scale_attn_weights && c.tie_word_embeddings);
    assert!(!c.scale_attn_by_inverse_layer_idx && !c.reorder_and_upcast_attn);
    assert_eq!(c.activation, Activation::GeluNew);
    assert_eq!(c.head_dim(), 64);
    assert_eq!(c.attention_scale(5), 0.125);
}

#[test]
fn every_inference_field_is_read() {
    let json = GPT2
        .replace("\"vocab_size\": 50257", "\"vocab_size\": 50257, \"n_inner\": 1000, \"scale_attn_weights\": false, \"scale_attn_by_inverse_layer_idx\": true, \"reorder_and_upcast_attn\": true, \"tie_word_embeddings\": false")
        .replace("gelu_new", "relu")
        .replace("1e-05", "1e-6");
    let c = Config::from_json(&json).unwrap();
    assert_eq!(c.n_inner, 1000);
    assert_eq!(c.activation, Activation::Relu);
    assert_eq!(c.layer_norm_epsilon, 1e-6);
    assert!(!c.scale_attn_weights && c.scale_attn_by_inverse_layer_idx);
    assert!(c.reorder_and_upcast_attn && !c.tie_word_embeddings);
    assert_eq!(c.attention_scale(3), 0.25);
}

fn error_of(json: &str) -> String {
    format!("{:#}", Config::from_json(json).unwrap_err())
}

#[test]
fn bad_configs_are_errors_that_say_what_is_wrong() {
    let cases = [
        ("{not json", "not valid JSON"),
        (
            &GPT2.replace("\"n_embd\": 768,", "") as &str,
            "lacks the field \"n_embd\"",
        ),
        (
            &GPT2.replace("\"n_head\": 12", "\"n_head\": 7"),
            "not divisible by n_head",
        ),
        (
            &GPT2.replace("\"n_layer\": 12", "\"n_layer\": 0"),
            "n_layer is 0",
        ),
        (
            &GPT2.replace("\"n_embd\": 768", "\"n_embd\": -768"),
            "n_embd is -768",
        ),
        (
            &GPT2.replace("\"vocab_size\": 50257", "\"vocab_size\": 99999999999"),
            "sane limit",
        ),
        (
            &GPT2.replace("\"n_ctx\": 1024", "\"n_ctx\": 2048"),
            "disagree",
        ),
        (
            &GPT2.replace("gelu_new", "gelu_magic"),
            "unsupported activation_function \"gelu_magic\"",
        ),
        (
            &GPT2.replace("\"model_type\": \"gpt2\"", "\"model_type\": \"llama\""),
            "llama",
        ),
        (&GPT2.replace("1e-05", "-1.0"), "layer_norm_epsilon"),
    ];
    for (json, expected) in cases {
        let err = error_of(json);
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
    }
}

#[test]
fn every_activation_name_transformers_uses_for_gpt2_is_known() {
    for (name, act) in [
        ("gelu_new", Activation::GeluNew),
        ("gelu_pytorch_tanh", Activation::GeluNew),
        ("gelu", Activation::Gelu),
        ("gelu_fast", Activation::GeluFast),
        ("quick_gelu", Activation::QuickGelu),
        ("relu", Activation::Relu),
        ("silu", Activation::Silu),
        ("swish", Activation::Silu),
    ] {
        assert_eq!(Activation::from_name(name).unwrap(), act);
    }
}
