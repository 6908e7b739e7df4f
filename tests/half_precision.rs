//! Half-precision weights: kept as stored, read by the fast kernels, upcast
//! by the reference tier, written back bit for bit, refused when not finite,
//! and within the published error budget (docs/half-precision.md); the same
//! budget for a key/value cache kept in half precision.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_close, golden_dir, MODEL};
use gpt2_ndarray::precision::{
    compare_logits, forward_with_cache, greedy_agreement, greedy_agreement_with_cache,
    greedy_continuation, LogitAgreement,
};
use gpt2_ndarray::{reference, Dtype, Gpt2, KvCache, LoadOptions, Logits, Trace};
use serde_json::Value;

fn golden_model() -> Gpt2 {
    Gpt2::from_dir(golden_dir().join("model")).expect("golden model")
}

fn kjv_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/kjv-gpt2")
}

/// The tokens of a perplexity golden file.
fn ids_of(path: &Path) -> Vec<u32> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("ids")).unwrap();
    v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A fresh directory under the target directory (no absolute path is kept).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `golden/model` converted to `dtype` by `save_safetensors`, with its config.
fn converted_golden(dtype: Dtype) -> PathBuf {
    let dir = scratch(&format!("golden-{dtype}"));
    std::fs::copy(
        golden_dir().join("model/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    golden_model()
        .save_safetensors(&dir.join("model.safetensors"), dtype)
        .unwrap();
    dir
}

#[test]
fn a_checkpoint_stored_in_f16_is_kept_in_f16_and_gives_the_logits_of_its_upcast() {
    // models/kjv-gpt2 is stored as float16: its matrices stay f16, read in
    // place from the memory map, half the bytes of f32.
    let model = Gpt2::from_dir(kjv_dir()).expect("kjv-gpt2");
    assert_eq!(model.dtype(), Some(Dtype::F16));
    assert!(model.matrices().all(|m| m.is_shared()));
    let upcast = model.to_dtype(Dtype::F32);
    assert_eq!(
        model.matrices().map(|m| m.stored_bytes()).sum::<usize>() * 2,
        upcast.matrices().map(|m| m.stored_bytes()).sum::<usize>()
    );
    let ids = ids_of(&golden_dir().join("kjv-gpt2/perplexity.json"));
    // Up to 32 positions every product runs the same kernel on the halves as
    // on the upcast values: the same bits.
    let short = &ids[..20];
    assert_eq!(
        model.forward(short).unwrap(),
        upcast.forward(short).unwrap()
    );
    // Longer, the GEMM widens panel by panel and may add in another order.
    let long = &ids[..256];
    assert_close(
        "kjv-gpt2 logits, f16 as stored vs f32 upcast",
        model.forward(long).unwrap().view().into_dyn(),
        upcast.forward(long).unwrap().view().into_dyn(),
        MODEL,
    );
    // And through the cache, token by token.
    let a = greedy_continuation(&model, &ids[..8], 24).unwrap();
    assert_eq!(a, greedy_continuation(&upcast, &ids[..8], 24).unwrap());
}

#[test]
fn the_reference_tier_upcasts_half_weights_once() {
    let model = golden_model().to_dtype(Dtype::BF16);
    let ids = [464, 3290, 318, 257, 1332];
    let upcast = model.to_dtype(Dtype::F32);
    assert_eq!(
        reference::forward(&model, &ids).logits(),
        reference::forward(&upcast, &ids).logits()
    );
    // The fast model on the halves equals the reference on their upcast.
    assert_close(
        "bf16 golden model, fast vs reference",
        model.forward(&ids).unwrap().view().into_dyn(),
        reference::forward(&model, &ids).logits().into_dyn(),
        MODEL,
    );
}

#[test]
#[should_panic(expected = "Matrix::view on a f16 matrix")]
fn viewing_a_half_matrix_as_f32_is_refused_loudly() {
    let _ = golden_model().to_dtype(Dtype::F16).wte.view();
}

/// The backward pass and the training step take half weights as the forward
/// does: the gradients are those of the upcast model (each box's backward
/// too, called on a half layer directly).
#[test]
fn gradients_of_a_half_model_are_those_of_its_upcast() {
    use gpt2_ndarray::train;
    use ndarray::{array, Array2};
    let model = golden_model().to_dtype(Dtype::F16);
    let upcast = model.to_dtype(Dtype::F32);
    let inputs = array![[464u32, 3290, 318, 257], [1332, 11, 290, 262]];
    let targets = array![[3290u32, 318, 257, 1332], [11, 290, 262, 13]];
    let half = reference::loss_and_gradients(&model, inputs.view(), targets.view());
    assert_eq!(
        half,
        reference::loss_and_gradients(&upcast, inputs.view(), targets.view())
    );
    let fast = train::loss_and_gradients(&model, inputs.view(), targets.view()).unwrap();
    assert_eq!(
        fast,
        train::loss_and_gradients(&upcast, inputs.view(), targets.view()).unwrap()
    );
    let layer = &model.h[0].mlp.c_fc;
    let x = Array2::from_shape_fn((3, layer.n_in()), |(t, i)| ((t * 7 + i) % 11) as f32 - 5.0);
    let dy = Array2::from_shape_fn((3, layer.n_out()), |(t, o)| ((t + o) % 5) as f32 - 2.0);
    assert_eq!(
        reference::conv1d_backward(x.view(), layer, dy.view()),
        reference::conv1d_backward(x.view(), &upcast.h[0].mlp.c_fc, dy.view())
    );
}

#[test]
fn converted_files_load_as_to_dtype_and_write_back_bit_for_bit() {
    for dtype in [Dtype::F16, Dtype::BF16, Dtype::F32] {
        let dir = converted_golden(dtype);
        let loaded = Gpt2::from_dir(&dir).unwrap();
        let expected = golden_model().to_dtype(dtype);
        assert_eq!(loaded.dtype(), Some(dtype));
        for (a, b) in loaded.matrices().zip(expected.matrices()) {
            assert_eq!(a, b, "{dtype}");
        }
        assert_eq!(loaded.ln_f.weight, expected.ln_f.weight);
        assert_eq!(loaded.h[1].mlp.c_fc.bias, expected.h[1].mlp.c_fc.bias);
        // --dtype at load gives the same model.
        let options = LoadOptions {
            dtype: Some(dtype),
            ..LoadOptions::default()
        };
        let at_load = Gpt2::from_dir_options(golden_dir().join("model"), &options).unwrap();
        assert!(at_load
            .matrices()
            .zip(expected.matrices())
            .all(|(a, b)| a == b));
        // Writing a half model in its own dtype copies its bits.
        let again = scratch(&format!("again-{dtype}"));
        loaded
            .save_safetensors(&again.join("model.safetensors"), dtype)
            .unwrap();
        assert_eq!(
            std::fs::read(dir.join("model.safetensors")).unwrap(),
            std::fs::read(again.join("model.safetensors")).unwrap()
        );
    }
}

/// The JSON header of a safetensors file.
fn header(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + n]).unwrap()
}

#[test]
fn written_files_name_every_tensor_as_transformers_does() {
    // golden/model/model.safetensors was written by `save_pretrained`: the
    // same keys (`transformer.` prefix, tied head not repeated), shapes,
    // dtype and metadata.
    let ours = header(&converted_golden(Dtype::F32).join("model.safetensors"));
    let theirs = header(&golden_dir().join("model/model.safetensors"));
    let entries = |h: &Value| {
        let mut e: Vec<(String, Value, Value)> = h
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v["shape"].clone(), v["dtype"].clone()))
            .collect();
        e.sort_by(|a, b| a.0.cmp(&b.0));
        e
    };
    assert_eq!(entries(&ours), entries(&theirs));
    assert_eq!(ours["__metadata__"], theirs["__metadata__"]);
}

/// Overwrite the first element of `tensor` in a safetensors file with `bits`.
fn poke(path: &Path, tensor: &str, bits: u16) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header[tensor]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    bytes[start..start + 2].copy_from_slice(&bits.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn non_finite_half_weights_are_refused_naming_the_tensor() {
    for (dtype, bits, what) in [
        (Dtype::F16, 0x7e00, "NaN"),
        (Dtype::F16, 0xfc00, "-inf"),
        (Dtype::BF16, 0x7f80, "inf"),
        (Dtype::BF16, 0x7fc0, "NaN"),
    ] {
        let dir = converted_golden(dtype);
        let key = "transformer.h.2.mlp.c_fc.weight";
        poke(&dir.join("model.safetensors"), key, bits);
        let err = format!(
            "{:#}",
            Gpt2::from_dir(&dir).expect_err("a non-finite weight")
        );
        assert!(
            err.contains("h.2.mlp.c_fc.weight") && err.contains(&format!("contains {what}")),
            "{dtype} {bits:#06x}: {err}"
        );
        // The largest finite values are fine.
        let finite = if dtype == Dtype::F16 { 0x7bff } else { 0x7f7f };
        poke(&dir.join("model.safetensors"), key, finite);
        Gpt2::from_dir(&dir).expect("finite weights load");
    }
}

/// The golden model's error budget, as published in docs/half-precision.md
/// (`examples/precision.rs --model golden/model --ids
/// golden/reference/perplexity.json`): max |Δ logit| over the 128 positions
/// of the first window, top-1 agreements, greedy agreement (4 prompts of 16
/// tokens, 64 new tokens each), perplexity over the 300 tokens.
struct Budget {
    dtype: Dtype,
    max_abs_diff: f32,
    top1_agree: usize,
    greedy_agree: usize,
    perplexity: f64,
}

const PUBLISHED: [Budget; 2] = [
    Budget {
        dtype: Dtype::F16,
        max_abs_diff: F16_MAX_ABS_DIFF,
        top1_agree: F16_TOP1,
        greedy_agree: F16_GREEDY,
        perplexity: F16_PPL,
    },
    Budget {
        dtype: Dtype::BF16,
        max_abs_diff: BF16_MAX_ABS_DIFF,
        top1_agree: BF16_TOP1,
        greedy_agree: BF16_GREEDY,
        perplexity: BF16_PPL,
    },
];
const F16_MAX_ABS_DIFF: f32 = 2.664_28e-2;
const F16_TOP1: usize = 128;
const F16_GREEDY: usize = 256;
const F16_PPL: f64 = 8_281_909.014;
const BF16_MAX_ABS_DIFF: f32 = 0.251_414_2;
const BF16_TOP1: usize = 125;
const BF16_GREEDY: usize = 256;
const BF16_PPL: f64 = 8_306_198.793;

/// How far a figure may move from the published one: the figures depend on
/// the kernels' order of summation only through f32 rounding (~1e-6
/// relative), far below the half-precision effects measured (≥ 1e-4), so
/// 2% of a Δ and 1e-5 relative of a perplexity are ample, and a change of
/// the rounding (say, truncating instead of rounding to nearest) moves the
/// Δ by a factor of about two.
const DIFF_RTOL: f32 = 0.02;
const PPL_RTOL: f64 = 1e-5;

#[test]
fn the_golden_model_stays_within_its_published_error_budget() {
    let model = golden_model();
    let ids = ids_of(&golden_dir().join("reference/perplexity.json"));
    let window = &ids[..model.config.n_positions];
    let logits = model.forward(window).unwrap();
    let stride = model.config.n_positions;
    for budget in PUBLISHED {
        let half = model.to_dtype(budget.dtype);
        let a = compare_logits(logits.view(), half.forward(window).unwrap().view());
        let (same, _) = greedy_agreement(&model, &half, &ids, 4, 16, 64).unwrap();
        let ppl = gpt2_ndarray::perplexity::perplexity(&half, &ids, stride, |_, _| {})
            .unwrap()
            .perplexity();
        let d = budget.dtype;
        eprintln!(
            "{d}: max |Δ| {:e}, top-1 {}/{}, greedy {same}/256, perplexity {ppl}",
            a.max_abs_diff, a.top1_agree, a.positions
        );
        let published = (budget.max_abs_diff, budget.top1_agree, budget.greedy_agree);
        assert_agreement(&d.to_string(), &a, same, published);
        assert!(
            (ppl - budget.perplexity).abs() <= PPL_RTOL * budget.perplexity,
            "{d}: perplexity {ppl}, published {}",
            budget.perplexity
        );
    }
}

/// The golden model with its key/value cache kept in half precision
/// (`docs/half-precision.md`, "A half key/value cache"): how far the logits
/// move from the `f32` cache's, and how many greedy tokens stay the same.
struct CacheBudget {
    dtype: Dtype,
    max_abs_diff: f32,
    top1_agree: usize,
    greedy_agree: usize,
}

const PUBLISHED_CACHE: [CacheBudget; 2] = [
    CacheBudget {
        dtype: Dtype::F16,
        max_abs_diff: 9.780e-3,
        top1_agree: 128,
        greedy_agree: 256,
    },
    CacheBudget {
        dtype: Dtype::BF16,
        max_abs_diff: 8.900e-2,
        top1_agree: 127,
        greedy_agree: 256,
    },
];

#[test]
fn a_half_cache_stays_within_its_published_error_budget() {
    let model = golden_model();
    let ids = ids_of(&golden_dir().join("reference/perplexity.json"));
    let window = &ids[..model.config.n_positions];
    let logits = model.forward(window).unwrap();
    for budget in PUBLISHED_CACHE {
        let d = budget.dtype;
        let half = forward_with_cache(&model, window, d).unwrap();
        let a = compare_logits(logits.view(), half.view());
        let (same, _) = greedy_agreement_with_cache(&model, d, &ids, 4, 16, 64).unwrap();
        eprintln!(
            "{d} cache: max |Δ| {:e}, top-1 {}/{}, greedy {same}/256",
            a.max_abs_diff, a.top1_agree, a.positions
        );
        let published = (budget.max_abs_diff, budget.top1_agree, budget.greedy_agree);
        assert_agreement(&format!("{d} cache"), &a, same, published);
    }
}

/// The figures both budgets publish, `(max |Δ logit|, top-1 agreement,
/// greedy agreement)`: the first within [`DIFF_RTOL`], the others exactly.
fn assert_agreement(
    label: &str,
    a: &LogitAgreement,
    greedy: usize,
    (max_abs_diff, top1_agree, greedy_agree): (f32, usize, usize),
) {
    assert!(
        (a.max_abs_diff - max_abs_diff).abs() <= DIFF_RTOL * max_abs_diff,
        "{label}: max |Δ logit| {:e}, published {max_abs_diff:e}",
        a.max_abs_diff
    );
    assert_eq!(a.top1_agree, top1_agree, "{label}: top-1 agreement");
    assert_eq!(greedy, greedy_agree, "{label}: greedy agreement");
}

/// A half cache keeps each key and value rounded to nearest (the first
/// block's, computed from the same inputs, are the `f32` cache's rounded),
/// in half the bytes; converting an `f32` cache rounds what it holds the
/// same way; decoding token by token over a half cache gives the logits of
/// one pass over the whole sequence with a half cache (up to the rounding
/// of a key or value the two orders of summation tip differently); `f64` is
/// refused.
#[test]
fn a_half_cache_keeps_rounded_keys_and_values_and_decodes_as_one_pass() {
    let model = golden_model();
    let n_layer = model.config.n_layer;
    let ids = [464u32, 3290, 318, 257, 1332, 286, 262, 6953, 11, 290];
    let step = |ids: &[u32], cache: &mut KvCache| {
        model
            .forward_step(ids, None, cache, Logits::Last, &mut Trace::off())
            .unwrap()
    };
    for dtype in [Dtype::F16, Dtype::BF16] {
        let round = |x: f32| match dtype {
            Dtype::F16 => half::f16::from_f32(x).to_f32(),
            _ => half::bf16::from_f32(x).to_f32(),
        };
        let mut full = KvCache::new(n_layer);
        let mut rounded = KvCache::new(n_layer).with_dtype(dtype).unwrap();
        assert_eq!(rounded.dtype(), dtype);
        step(&ids, &mut full);
        let one_pass = step(&ids, &mut rounded);
        let (k, v) = full.keys_values(0);
        let (k_half, v_half) = rounded.keys_values(0);
        assert_eq!(k_half, k.mapv(round), "{dtype}: block 0's keys, rounded");
        assert_eq!(v_half, v.mapv(round), "{dtype}: block 0's values, rounded");
        assert_ne!(k_half, k, "{dtype}: the keys were rounded");
        assert_eq!(2 * rounded.bytes(), full.bytes(), "{dtype}: half the bytes");
        let converted = full.clone().with_dtype(dtype).unwrap();
        for layer in 0..n_layer {
            let (k, v) = full.keys_values(layer);
            assert_eq!(
                converted.keys_values(layer),
                (k.mapv(round).into(), v.mapv(round).into())
            );
        }

        let mut stepped = KvCache::new(n_layer).with_dtype(dtype).unwrap();
        let mut logits = step(&ids[..3], &mut stepped);
        for &id in &ids[3..] {
            logits = step(&[id], &mut stepped);
        }
        // The two orders of summation round a few keys or values the other
        // way (one half ulp): a fifth of the cache's budget covers that.
        let budget = PUBLISHED_CACHE.iter().find(|b| b.dtype == dtype).unwrap();
        let tol = common::Tol {
            atol: budget.max_abs_diff / 5.0,
            rtol: 0.0,
        };
        assert_close(
            &format!("{dtype} cache: token by token vs one pass"),
            logits.row(0).into_dyn(),
            one_pass.row(0).into_dyn(),
            tol,
        );
    }
    let err = KvCache::new(n_layer).with_dtype(Dtype::F64).unwrap_err();
    assert!(
        err.to_string().contains("f64") || err.to_string().contains("F64"),
        "{err}"
    );
}

/// transformers with every key and value rounded as it is computed
/// (`python_ref/kv_cache.py`, a forward hook on each `attn.c_attn`) is the
/// reference of a half cache: the same logits at the window's last position
/// (up to a key or value that the two orders of summation round the other
/// way), and the same budget over the window.
#[test]
fn a_half_cache_gives_what_transformers_gives_with_rounded_keys_and_values() {
    let model = golden_model();
    let ids = ids_of(&golden_dir().join("reference/perplexity.json"));
    let window = &ids[..model.config.n_positions];
    let dir = golden_dir().join("reference/kv_cache");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("kv_cache.json")).unwrap()).unwrap();
    assert_eq!(summary["positions"], window.len());
    let logits = model.forward(window).unwrap();
    for (name, dtype) in [("f16", Dtype::F16), ("bf16", Dtype::BF16)] {
        let torch = &summary["dtypes"][name];
        let torch_max = torch["max_abs_logit_diff"].as_f64().unwrap() as f32;
        let half = forward_with_cache(&model, window, dtype).unwrap();
        let want = common::read_f32(dir.join(format!("{name}.last.npy")));
        let last = half.row(half.nrows() - 1);
        let tol = common::Tol {
            atol: torch_max / 5.0,
            rtol: 0.0,
        };
        assert_close(
            &format!("{name} cache: last position vs transformers"),
            last.into_dyn(),
            want.view(),
            tol,
        );
        // The change a half cache makes (not the mismatch allowed above).
        let f32_last = logits.row(logits.nrows() - 1);
        let moved = last
            .iter()
            .zip(&f32_last)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            moved > tol.atol,
            "{name}: the rounding moved the last logits by only {moved:e}"
        );
        let a = compare_logits(logits.view(), half.view());
        assert!(
            (a.max_abs_diff - torch_max).abs() <= DIFF_RTOL * torch_max,
            "{name} cache: max |Δ logit| {:e}, transformers {torch_max:e}",
            a.max_abs_diff
        );
        assert_eq!(
            a.top1_agree as u64,
            torch["top1_agree"].as_u64().unwrap(),
            "{name}: top-1"
        );
    }
}
