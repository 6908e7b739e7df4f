//! The proof that the two tiers agree: the fast model ([`Gpt2::forward`],
//! `forward_traced`, `forward_step` with a KV cache, `forward_batch`) equals
//! the reference forward (`src/reference/`) on the golden model, the bundled
//! trained model, the seven config variants and randomly drawn small configs,
//! at prompt lengths that cross every place where the fast path changes
//! strategy:
//!
//! - 1..=7: the matrix–vector kernel (up to 4 rows), the few-rows kernel from 5;
//! - 31..=34: the few-rows kernel's last sizes (up to 32 rows), then the packed GEMM;
//! - 63..=66: attention's blocks of 64 queries, one and two of them;
//! - 130: three query blocks, a long GEMM; and `n_positions`, the longest prompt
//!   each model takes (128 for the golden model, 256 for kjv-gpt2, 136 for the others).
//!
//! Both tiers compute in f32 and differ only in summation order and in the
//! `exp`/`tanh` they use, so the tolerance is the whole-model one ([`FAST`]);
//! every comparison prints its worst element with `--nocapture`, and a
//! failure names the model, the length, the step and the worst element.
//! The last test checks the fast model on the variants' PyTorch goldens
//! directly, as `tests/reference.rs` checks the reference.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::tensor_names;
use common::{
    assert_close, golden_dir, read_f32, variant_dirs, variant_prompt, variants_manifest, Tol,
    MODEL, TRAINED,
};
use gpt2_ndarray::config::Activation;
use gpt2_ndarray::model::{Attention, Block, Mlp};
use gpt2_ndarray::weights::{Conv1D, LayerNorm};
use gpt2_ndarray::{reference, Config, Gpt2, KvCache, Logits, Trace};
use ndarray::{s, Array1, Array2};

/// Fast against reference, both f32: summation order and `exp`/`tanh` ulps
/// through a few layers, the same bound as against PyTorch ([`MODEL`]).
const FAST: Tol = MODEL;

/// The prompt lengths that cross the kernels' thresholds (see the module docs).
const LENGTHS: [usize; 16] = [1, 2, 3, 4, 5, 6, 7, 31, 32, 33, 34, 63, 64, 65, 66, 130];

/// A small deterministic generator (SplitMix64): ids and weights without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Roughly N(0, std²): a sum of four uniforms, centred and scaled.
    fn normal(&mut self, std: f32) -> f32 {
        let u: f32 = (0..4)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32)
            .sum();
        (u - 2.0) * std * 3f32.sqrt()
    }
    fn matrix(&mut self, rows: usize, cols: usize, std: f32) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |_| self.normal(std))
    }
    fn vector(&mut self, n: usize, mean: f32, std: f32) -> Array1<f32> {
        Array1::from_shape_fn(n, |_| mean + self.normal(std))
    }
}

fn random_ids(len: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng(seed);
    (0..len).map(|_| rng.below(vocab) as u32).collect()
}

/// A GPT-2 with random weights (scales as `python_ref/export_model.py`'s) for `config`.
fn random_model(config: Config, seed: u64) -> Gpt2 {
    config.validate().expect("a valid config");
    let mut rng = Rng(seed);
    let (c, f) = (config.n_embd, config.n_inner);
    let ln = |rng: &mut Rng| LayerNorm {
        weight: rng.vector(c, 1.0, 0.3),
        bias: rng.vector(c, 0.0, 0.2),
        eps: config.layer_norm_epsilon,
    };
    let conv = |rng: &mut Rng, n_in: usize, n_out: usize, std: f32| Conv1D {
        weight: rng.matrix(n_in, n_out, std).into(),
        bias: rng.vector(n_out, 0.0, 0.1),
    };
    let h = (0..config.n_layer)
        .map(|_| Block {
            ln_1: ln(&mut rng),
            attn: Attention {
                c_attn: conv(&mut rng, c, 3 * c, 0.2),
                c_proj: conv(&mut rng, c, c, 0.15),
            },
            ln_2: ln(&mut rng),
            mlp: Mlp {
                c_fc: conv(&mut rng, c, f, 0.2),
                c_proj: conv(&mut rng, f, c, 0.1),
            },
        })
        .collect();
    Gpt2 {
        wte: rng.matrix(config.vocab_size, c, 0.7).into(),
        wpe: rng.matrix(config.n_positions, c, 0.3).into(),
        h,
        ln_f: ln(&mut rng),
        lm_head: (!config.tie_word_embeddings)
            .then(|| rng.matrix(config.vocab_size, c, 0.7).into()),
        stored_bytes: BTreeMap::new(),
        config,
    }
}

/// Six small configs, each with another activation, odd widths (heads of 3,
/// 5, 7, 9, 12, 16), odd `n_inner`, and the other flags drawn in turn.
fn random_configs() -> Vec<Config> {
    let activations = [
        Activation::GeluNew,
        Activation::Gelu,
        Activation::GeluFast,
        Activation::QuickGelu,
        Activation::Relu,
        Activation::Silu,
    ];
    let shapes = [(12, 4), (20, 4), (21, 3), (36, 4), (27, 3), (32, 2)]; // (n_embd, n_head)
    activations
        .into_iter()
        .zip(shapes)
        .enumerate()
        .map(|(k, (activation, (n_embd, n_head)))| Config {
            vocab_size: 61 + 10 * k,
            n_positions: 136,
            n_embd,
            n_layer: 2,
            n_head,
            n_inner: 3 * n_embd + k + 1,
            activation,
            layer_norm_epsilon: [1e-5, 1e-3, 0.05][k % 3],
            scale_attn_weights: k % 4 != 3,
            scale_attn_by_inverse_layer_idx: k % 2 == 1,
            reorder_and_upcast_attn: k % 3 == 2,
            tie_word_embeddings: k % 2 == 0,
        })
        .collect()
}

/// Every model the proof runs on, with its tolerance: the golden model, the
/// bundled trained model, the config variants, the random configs.
fn models() -> Vec<(String, Gpt2, Tol)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = vec![(
        "golden/model".to_owned(),
        Gpt2::from_dir(golden_dir().join("model")).expect("golden model"),
        FAST,
    )];
    let kjv = root.join("models/kjv-gpt2");
    if kjv.join("config.json").is_file() {
        let model = Gpt2::from_dir(&kjv).expect("models/kjv-gpt2");
        all.push(("models/kjv-gpt2".to_owned(), model, TRAINED));
    }
    for (name, dir) in variant_dirs() {
        let model = Gpt2::from_dir(&dir).expect("variant");
        all.push((format!("variant {name}"), model, FAST));
    }
    for (k, config) in random_configs().into_iter().enumerate() {
        let label = format!("random {k} ({:?}, C {})", config.activation, config.n_embd);
        all.push((label, random_model(config, 1000 + k as u64), FAST));
    }
    all
}

/// The lengths of [`LENGTHS`] the model can take (the longest capped at
/// `n_positions`), and `n_positions` itself: the longest prompt it accepts.
fn lengths(model: &Gpt2) -> Vec<usize> {
    let max = model.config.n_positions;
    let mut lengths: Vec<usize> = LENGTHS.iter().map(|&t| t.min(max)).collect();
    lengths.push(max);
    lengths.dedup();
    lengths
}

/// `Gpt2::forward` equals `reference::forward` at every threshold-crossing length.
#[test]
fn fast_logits_equal_the_reference_at_every_kernel_threshold() {
    for (label, model, tol) in models() {
        for t in lengths(&model) {
            let ids = random_ids(t, model.config.vocab_size, t as u64);
            let fast = model.forward(&ids).expect("forward");
            let slow = reference::forward(&model, &ids);
            assert_close(
                &format!("{label} T={t} logits"),
                fast.view().into_dyn(),
                slow.logits().into_dyn(),
                tol,
            );
        }
    }
}

/// Every traced step of the fast model equals the reference's step of the
/// same name (the trace and the reference share the names), so a divergence
/// is found at the first step where it appears.
#[test]
fn every_traced_step_of_the_fast_model_equals_the_reference() {
    for (label, model, tol) in models() {
        for t in [6, 33, 65] {
            let ids = random_ids(t, model.config.vocab_size, 7 * t as u64);
            let mut trace = Trace::all();
            model.forward_traced(&ids, &mut trace).expect("forward");
            let slow = reference::forward(&model, &ids);
            let names: Vec<&str> = slow.iter().map(|(n, _)| n).collect();
            let traced: Vec<&str> = trace.tensors.keys().map(String::as_str).collect();
            let mut sorted = names.clone();
            sorted.sort_unstable();
            assert_eq!(
                traced, sorted,
                "{label}: the trace and the reference name the same steps"
            );
            for (name, expected) in slow.iter() {
                let got = trace.get(name).expect("traced");
                assert_close(
                    &format!("{label} T={t} {name}"),
                    got.view(),
                    expected.view(),
                    tol,
                );
            }
        }
    }
}

/// Decoding with a KV cache, in chunks of 5, 1, 26, 65 and the rest (the
/// few-rows kernel, a matrix–vector step, few rows over a cache, two query
/// blocks over a cache of 32, then 33 or 31 more), gives the reference's logits
/// of the whole sequence at every position.
#[test]
fn cached_steps_equal_the_reference_of_the_whole_sequence() {
    for (label, model, tol) in models() {
        let t = 130.min(model.config.n_positions);
        let ids = random_ids(t, model.config.vocab_size, 99);
        let slow = reference::forward(&model, &ids);
        let mut cache = KvCache::new(model.config.n_layer);
        let mut start = 0;
        for len in [5, 1, 26, 65, t - 97] {
            let chunk = &ids[start..start + len];
            let fast = model
                .forward_step(chunk, None, &mut cache, Logits::All, &mut Trace::off())
                .expect("step");
            let expected = slow.logits().slice_move(s![start..start + len, ..]);
            let name = format!("{label} cached positions {start}..{}", start + len);
            assert_close(&name, fast.view().into_dyn(), expected.into_dyn(), tol);
            start += len;
        }
        assert_eq!(cache.len(), t);
    }
}

/// Every prompt length from 1 to `n_positions` on a random config, from
/// scratch and one token at a time through the cache: each gives the
/// reference's logits.
#[test]
fn every_length_from_one_to_n_positions_equals_the_reference() {
    for (k, config) in random_configs().into_iter().enumerate().take(2) {
        let model = random_model(config, 2000 + k as u64);
        let n = model.config.n_positions;
        let ids = random_ids(n, model.config.vocab_size, 7 + k as u64);
        let slow = reference::forward(&model, &ids);
        let mut cache = KvCache::new(model.config.n_layer);
        for t in 1..=n {
            let fast = model.forward(&ids[..t]).expect("forward");
            let expected = reference::forward(&model, &ids[..t]);
            let name = format!("random {k} T={t} logits");
            assert_close(
                &name,
                fast.view().into_dyn(),
                expected.logits().into_dyn(),
                FAST,
            );
            let step = model
                .forward_step(
                    &ids[t - 1..t],
                    None,
                    &mut cache,
                    Logits::All,
                    &mut Trace::off(),
                )
                .expect("cached step");
            let expected = slow.logits().slice_move(s![t - 1..t, ..]);
            let name = format!("random {k} cached position {}", t - 1);
            assert_close(&name, step.view().into_dyn(), expected.into_dyn(), FAST);
        }
    }
}

/// A padded batch (one full row, one left-padded, one right-padded) gives at
/// each real position the reference's logits of that sequence alone.
#[test]
fn padded_batch_equals_the_reference_of_each_sequence() {
    for (label, model, tol) in models() {
        let t = 130.min(model.config.n_positions);
        let vocab = model.config.vocab_size;
        // (length, left padding?)
        let rows = [(t, true), (65, true), (33, false), (5, false)];
        let mut ids = Array2::<u32>::zeros((rows.len(), t));
        let mut mask = Array2::from_elem((rows.len(), t), false);
        let mut sequences = Vec::new();
        for (b, &(len, left)) in rows.iter().enumerate() {
            let seq = random_ids(len, vocab, 500 + b as u64);
            let offset = if left { t - len } else { 0 };
            for (i, &id) in seq.iter().enumerate() {
                ids[[b, offset + i]] = id;
                mask[[b, offset + i]] = true;
            }
            sequences.push((seq, offset));
        }
        let fast = model.forward_batch(&ids, &mask).expect("batch");
        for (b, (seq, offset)) in sequences.iter().enumerate() {
            let slow = reference::forward(&model, seq);
            let got = fast.slice(s![b, *offset..offset + seq.len(), ..]);
            let name = format!("{label} batch row {b} ({} tokens)", seq.len());
            assert_close(&name, got.into_dyn(), slow.logits().into_dyn(), tol);
        }
    }
}

/// The fast model on the variants' own PyTorch goldens too (the reference
/// passes the same check in `tests/reference.rs`): every traced step of the
/// short prompt, the logits of the 66-token one.
#[test]
fn fast_model_matches_transformers_on_every_config_variant() {
    let manifest = variants_manifest();
    let names = tensor_names(&manifest);
    let (short, long) = (variant_prompt("short"), variant_prompt("long"));
    for (variant, dir) in variant_dirs() {
        let model = Gpt2::from_dir(&dir).expect("variant");
        let mut trace = Trace::all();
        model.forward_traced(&short, &mut trace).expect("forward");
        for name in &names {
            let expected = read_f32(dir.join("short").join(format!("{name}.npy")));
            let got = trace.get(name).expect("traced");
            assert_close(
                &format!("fast {variant} {name}"),
                got.view(),
                expected.view(),
                MODEL,
            );
        }
        let logits = model.forward(&long).expect("forward");
        let expected = read_f32(dir.join("long/logits.npy"));
        let label = format!("fast {variant} long logits");
        assert_close(&label, logits.view().into_dyn(), expected.view(), MODEL);
    }
}
