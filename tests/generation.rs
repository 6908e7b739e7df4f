//! Generation: the cache equals recomputation, greedy decoding equals
//! transformers' `generate`, the sampling filters equal its logits processors,
//! seeds reproduce, batches equal one-by-one, and the context limit is a clean stop.

mod common;

use common::{assert_close, golden_dir, read_f32, SINGLE_OP};
use gpt2_ndarray::generate::{
    apply_repetition_penalty, apply_temperature, apply_top_k, apply_top_p, generate,
    generate_batch, left_pad, process_logits, BatchGeneration, GenerateOptions, Generation,
    StopReason, TextStream,
};
use gpt2_ndarray::reference::softmax;
use gpt2_ndarray::{Dtype, Gpt2, KvCache, Logits, SequenceStep, Tokenizer, Trace};
use ndarray::{Array2, Ix1};
use serde_json::Value;

fn model() -> (Gpt2, Tokenizer) {
    let dir = golden_dir().join("model");
    (
        Gpt2::from_dir(&dir).expect("model"),
        Tokenizer::from_dir(&dir).expect("tokenizer"),
    )
}

fn json(path: &str) -> Value {
    let path = golden_dir().join(path);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("json")
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn cached_decoding_gives_the_logits_of_a_full_recompute_at_every_step() {
    for common::Case { model: dir, .. } in common::reference_cases() {
        let model = Gpt2::from_dir(&dir).expect("model");
        let tokenizer = Tokenizer::from_dir(&dir).expect("tokenizer");
        cache_equals_recompute(&model, &tokenizer);
    }
}

/// Trained weights have larger activations than the random model's: the
/// trained models' whole-model budget serves both.
const CACHED: common::Tol = common::TRAINED;

fn cache_equals_recompute(model: &Gpt2, tokenizer: &Tokenizer) {
    let mut ids = tokenizer
        .encode("The cache must not change a thing")
        .unwrap();
    let mut cache = KvCache::new(model.config.n_layer);
    let mut logits = model
        .forward_step(&ids, None, &mut cache, Logits::Last, &mut Trace::off())
        .unwrap();
    for step in 0..24 {
        let full = model.forward(&ids).unwrap();
        let last = full.row(full.nrows() - 1);
        assert_close(
            &format!("step {step}"),
            logits.row(0).into_dyn(),
            last.into_dyn(),
            CACHED,
        );
        let next = gpt2_ndarray::generate::argmax(logits.row(0)) as u32;
        ids.push(next);
        logits = model
            .forward_step(&[next], None, &mut cache, Logits::Last, &mut Trace::off())
            .unwrap();
    }
}

#[test]
fn greedy_continuations_are_transformers_token_for_token() {
    for common::Case {
        model: dir,
        reference,
        ..
    } in common::reference_cases()
    {
        let model = Gpt2::from_dir(&dir).expect("model");
        let tokenizer = Tokenizer::from_dir(&dir).expect("tokenizer");
        let path = reference.join("generate.json");
        let cases: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let cases = cases["cases"].as_array().expect("cases");
        assert!(cases.len() >= 3);
        for case in cases {
            let prompt = u32s(&case["ids"]);
            let expected = u32s(&case["new_ids"]);
            let options = GenerateOptions {
                max_new_tokens: expected.len(),
                stop_at_end_of_text: false,
                ..GenerateOptions::default()
            };
            let (got, _) = generate(&model, &tokenizer, &prompt, &options).unwrap();
            assert_eq!(
                got,
                expected,
                "{}: greedy continuation of {} prompt tokens",
                dir.display(),
                prompt.len()
            );
        }
    }
}

/// `generate::argmax` (two vectorised passes) is the plain scan it stands
/// for: the first of the largest value, NaNs passed over, on ties, strided
/// views and a vocabulary's length.
#[test]
fn argmax_takes_the_first_of_the_largest() {
    use gpt2_ndarray::generate::argmax;
    use ndarray::{arr1, Array1};
    assert_eq!(
        argmax(arr1(&[1.0, 3.0, 2.0, 3.0]).view()),
        1,
        "the first on ties"
    );
    assert_eq!(argmax(arr1(&[5.0, -1.0, 5.0]).view()), 0);
    assert_eq!(argmax(arr1(&[-2.0, -1.0]).view()), 1);
    assert_eq!(argmax(arr1(&[f32::NEG_INFINITY, -1e30]).view()), 1);
    assert_eq!(argmax(Array1::<f32>::zeros(0).view()), 0, "empty: 0");
    let mut wide = Array1::<f32>::zeros(50257);
    wide[50256] = 1.0;
    assert_eq!(argmax(wide.view()), 50256, "the last of a vocabulary");
    assert_eq!(
        argmax(arr1(&[1.0, f32::NAN, 2.0]).view()),
        2,
        "NaN passed over"
    );
    assert_eq!(
        argmax(arr1(&[f32::NAN, 5.0]).view()),
        0,
        "nothing exceeds a NaN at 0"
    );
    assert_eq!(argmax(arr1(&[-0.0, 0.0]).view()), 0, "0 does not exceed -0");
    // Against the plain scan it stands for, on values with many ties (and a
    // few NaNs), every length up to past a few lanes, and strided views.
    let scan = |x: &[f32]| {
        let mut best = 0;
        for (i, &v) in x.iter().enumerate() {
            if v > x[best] {
                best = i;
            }
        }
        best
    };
    let mut rng = gpt2_ndarray::generate::Rng::new(5);
    for len in 1..80 {
        for _ in 0..20 {
            let x = Array1::from_shape_fn(len, |_| match rng.next_u64() % 9 {
                8 => f32::NAN,
                v => v as f32 - 3.0,
            });
            assert_eq!(argmax(x.view()), scan(x.as_slice().unwrap()), "{x}");
            let every_other = x.slice(ndarray::s![..;2]);
            assert_eq!(
                argmax(every_other),
                scan(&every_other.to_vec()),
                "{every_other}"
            );
        }
    }
}

/// Each filter alone, then all of them in `generate`'s order, against the
/// scores transformers' processors give for the same logits.
#[test]
fn sampling_filters_give_the_distributions_of_transformers_logits_processors() {
    let golden = json("reference/filters/cases.json");
    let logits = read_f32(golden_dir().join("reference/filters/logits.npy"));
    let logits = logits.into_dimensionality::<Ix1>().expect("[vocab]");
    let context = u32s(&golden["ids"]);
    let expected =
        |name: &str| read_f32(golden_dir().join(format!("reference/filters/{name}.npy")));
    let number = |case: &str, field: &str| golden["cases"][case][field].as_f64().expect(field);

    let mut filtered = Vec::new();
    for (name, case) in golden["cases"].as_object().expect("cases") {
        let mut scores = logits.clone();
        let min_keep = case["min_tokens_to_keep"].as_u64().unwrap_or(1) as usize;
        match case["processor"].as_str() {
            Some("TemperatureLogitsWarper") => {
                apply_temperature(scores.view_mut(), number(name, "temperature") as f32)
            }
            Some("TopKLogitsWarper") => {
                apply_top_k(scores.view_mut(), number(name, "top_k") as usize, min_keep)
            }
            Some("TopPLogitsWarper") => {
                apply_top_p(scores.view_mut(), number(name, "top_p") as f32, min_keep)
            }
            Some("RepetitionPenaltyLogitsProcessor") => apply_repetition_penalty(
                scores.view_mut(),
                &context,
                number(name, "penalty") as f32,
            ),
            _ => continue, // the combined case, below
        }
        assert_close(
            name,
            scores.view().into_dyn(),
            expected(name).view(),
            SINGLE_OP,
        );
        filtered.push(name.clone());
    }
    assert_eq!(filtered.len(), 5, "cases checked: {filtered:?}");

    let options = GenerateOptions {
        do_sample: true,
        repetition_penalty: Some(1.3),
        temperature: 0.7,
        top_k: Some(50),
        top_p: Some(0.9),
        ..GenerateOptions::default()
    };
    let combined = process_logits(logits.view(), &context, &options);
    assert_close(
        "combined",
        combined.view().into_dyn(),
        expected("combined").view(),
        SINGLE_OP,
    );
    let probs = softmax(combined.view());
    assert_close(
        "combined.probs",
        probs.view().into_dyn(),
        expected("combined.probs").view(),
        SINGLE_OP,
    );
}

fn sampled(model: &Gpt2, tokenizer: &Tokenizer, seed: u64) -> Vec<u32> {
    let prompt = tokenizer.encode("Once upon a time").unwrap();
    let options = GenerateOptions {
        max_new_tokens: 16,
        do_sample: true,
        temperature: 1.3,
        top_k: Some(200),
        top_p: Some(0.95),
        seed,
        stop_at_end_of_text: false,
        ..GenerateOptions::default()
    };
    generate(model, tokenizer, &prompt, &options).unwrap().0
}

#[test]
fn the_same_seed_gives_the_same_text_whatever_the_thread_count() {
    let (model, tokenizer) = model();
    let reference = sampled(&model, &tokenizer, 42);
    for threads in [1, 2, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let again = pool.install(|| sampled(&model, &tokenizer, 42));
        assert_eq!(again, reference, "{threads} threads");
    }
    assert_ne!(
        sampled(&model, &tokenizer, 43),
        reference,
        "another seed, another text"
    );
}

#[test]
fn a_left_padded_batch_generates_what_each_prompt_generates_alone() {
    let (model, tokenizer) = model();
    let prompts: Vec<Vec<u32>> = [
        "Hi",
        "The quick brown fox jumps over",
        "A long time ago, in",
    ]
    .iter()
    .map(|p| tokenizer.encode(p).unwrap())
    .collect();
    // Each with the key/value cache kept as f32 and in half precision.
    let kv_caches = [Dtype::F32, Dtype::F16, Dtype::BF16];
    for (do_sample, kv_cache) in [false, true]
        .into_iter()
        .flat_map(|s| kv_caches.map(|k| (s, k)))
    {
        let options = GenerateOptions {
            max_new_tokens: 12,
            do_sample,
            top_k: Some(50),
            seed: 7,
            stop_at_end_of_text: false,
            kv_cache,
            ..GenerateOptions::default()
        };
        let batch = generate_batch(&model, &tokenizer, &prompts, &options).unwrap();
        for (b, prompt) in prompts.iter().enumerate() {
            let alone = GenerateOptions {
                seed: 7 + b as u64,
                ..options.clone()
            };
            let (expected, _) = generate(&model, &tokenizer, prompt, &alone).unwrap();
            assert_eq!(
                batch[b], expected,
                "prompt {b}, do_sample {do_sample}, {kv_cache} cache"
            );
        }
    }
}

/// Prompts of 1 to 9 tokens (different lengths, so the stacked rows of a
/// step are ragged), `n` of them.
fn prompts(n: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|b| {
            (0..1 + b % 9)
                .map(|t| ((b * 7919 + t * 104_729) % 50_000) as u32)
                .collect()
        })
        .collect()
}

#[test]
fn forward_steps_gives_each_sequence_the_logits_of_its_own_forward_step() {
    let (model, _) = model();
    // Batch sizes on both sides of the matrix kernels' thresholds: 1, up to
    // GEMV_MAX_ROWS (4), the few-rows kernel (5..=32), the packed GEMM (> 32).
    for batch in [1, 3, 4, 5, 8, 32, 33, 40] {
        let prompts = prompts(batch);
        // Alone: a prefill and two decoding steps per sequence.
        let mut alone = Vec::new();
        for prompt in &prompts {
            let mut cache = KvCache::new(model.config.n_layer);
            let mut rows = vec![model
                .forward_step(prompt, None, &mut cache, Logits::Last, &mut Trace::off())
                .unwrap()];
            for id in [464, 13] {
                let step =
                    model.forward_step(&[id], None, &mut cache, Logits::All, &mut Trace::off());
                rows.push(step.unwrap());
            }
            alone.push(rows);
        }
        // Together: the same three steps, every sequence stacked.
        let mut caches: Vec<KvCache> = (0..batch)
            .map(|_| KvCache::new(model.config.n_layer))
            .collect();
        for (step, ids) in [None, Some(464u32), Some(13)].into_iter().enumerate() {
            let one = ids.map(|id| [id]);
            let mut steps: Vec<SequenceStep<'_>> = caches
                .iter_mut()
                .zip(&prompts)
                .map(|(cache, prompt)| SequenceStep {
                    ids: one.as_ref().map_or(&prompt[..], |id| &id[..]),
                    mask: None,
                    cache,
                })
                .collect();
            let logits = model.forward_steps(&mut steps, Logits::Last).unwrap();
            assert_eq!(logits.dim(), (batch, model.config.vocab_size));
            for (b, rows) in alone.iter().enumerate() {
                assert_close(
                    &format!("batch {batch}, step {step}, sequence {b}"),
                    logits.row(b).into_dyn(),
                    rows[step].row(0).into_dyn(),
                    common::MODEL,
                );
            }
        }
        for (cache, prompt) in caches.iter().zip(&prompts) {
            assert_eq!(cache.len(), prompt.len() + 2);
        }
    }
}

#[test]
fn forward_steps_refuses_a_bad_sequence_before_touching_any_cache() {
    let (model, _) = model();
    let mut caches: Vec<KvCache> = (0..2).map(|_| KvCache::new(model.config.n_layer)).collect();
    let (good, bad) = ([464u32, 13], [50257u32]);
    let mut steps: Vec<SequenceStep<'_>> = caches
        .iter_mut()
        .zip([&good[..], &bad[..]])
        .map(|(cache, ids)| SequenceStep {
            ids,
            mask: None,
            cache,
        })
        .collect();
    let err = model.forward_steps(&mut steps, Logits::Last).unwrap_err();
    assert!(format!("{err:#}").contains("sequence 1"), "{err:#}");
    assert!(caches.iter().all(KvCache::is_empty), "no cache changed");
}

/// What [`generate`] gives each prompt alone, seed `seed + b` for prompt `b`.
fn alone(
    model: &Gpt2,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
) -> Vec<(Vec<u32>, StopReason)> {
    prompts
        .iter()
        .enumerate()
        .map(|(b, prompt)| {
            let options = GenerateOptions {
                seed: options.seed + b as u64,
                ..options.clone()
            };
            generate(model, tokenizer, prompt, &options).unwrap()
        })
        .collect()
}

#[test]
fn a_batch_of_every_size_generates_what_each_prompt_generates_alone() {
    let (model, tokenizer) = model();
    for batch in [2, 5, 33] {
        let prompts = prompts(batch);
        for do_sample in [false, true] {
            let options = GenerateOptions {
                max_new_tokens: 6,
                do_sample,
                temperature: 1.2,
                top_k: Some(100),
                top_p: Some(0.9),
                repetition_penalty: Some(1.3),
                seed: 11,
                stop_at_end_of_text: false,
                ..GenerateOptions::default()
            };
            let together = generate_batch(&model, &tokenizer, &prompts, &options).unwrap();
            let expected: Vec<Vec<u32>> = alone(&model, &tokenizer, &prompts, &options)
                .into_iter()
                .map(|(ids, _)| ids)
                .collect();
            assert_eq!(together, expected, "batch {batch}, do_sample {do_sample}");
        }
    }
}

/// Prompts of 20 to 88 tokens, `n` of them, not in order of length (a
/// chunk where one ends and the one before it goes on).
fn long_prompts(n: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|b| {
            (0..20 + 17 * (b * 3 % n))
                .map(|t| ((b * 7919 + t * 104_729 + 13) % 50_000) as u32)
                .collect()
        })
        .collect()
}

#[test]
fn a_prompt_run_in_chunks_generates_what_one_pass_generates() {
    let (model, tokenizer) = model();
    let prompts = long_prompts(5);
    for do_sample in [false, true] {
        // (Sampling from the top 40: a draw from all 50257 tokens can land
        // within a rounding of the border between two of them.)
        let one_pass = GenerateOptions {
            max_new_tokens: 8,
            do_sample,
            temperature: 1.2,
            top_k: Some(40),
            seed: 5,
            stop_at_end_of_text: false,
            prefill_chunk: None,
            ..GenerateOptions::default()
        };
        let expected = alone(&model, &tokenizer, &prompts, &one_pass);
        let expected_ids: Vec<Vec<u32>> = expected.iter().map(|(ids, _)| ids.clone()).collect();
        // 1 token at a time; chunks that end inside a prompt and between
        // prompts (a batch's share of 7 is one row per prompt).
        for chunk in [1, 7, 30, 256] {
            let options = GenerateOptions {
                prefill_chunk: Some(chunk),
                ..one_pass.clone()
            };
            let label = format!("chunk {chunk}, do_sample {do_sample}");
            assert_eq!(
                alone(&model, &tokenizer, &prompts, &options),
                expected,
                "{label}"
            );
            let together = generate_batch(&model, &tokenizer, &prompts, &options).unwrap();
            assert_eq!(together, expected_ids, "batch, {label}");
        }
    }
}

#[test]
fn a_padded_prompt_runs_in_chunks_from_its_first_real_token() {
    let (model, tokenizer) = model();
    let prompts = prompts(6); // 1 to 6 tokens: up to 5 of padding on the left
    let options = GenerateOptions {
        max_new_tokens: 5,
        do_sample: true,
        top_k: Some(40),
        seed: 9,
        stop_at_end_of_text: false,
        ..GenerateOptions::default()
    };
    let expected = generate_batch(&model, &tokenizer, &prompts, &options).unwrap();
    let (ids, mask) = left_pad(&prompts, 50256);
    for chunk in [1, 2, 6] {
        let options = GenerateOptions {
            prefill_chunk: Some(chunk),
            ..options.clone()
        };
        let mut padded =
            BatchGeneration::padded(&model, &tokenizer, &ids, &mask, options.clone()).unwrap();
        for step in &mut padded {
            step.unwrap();
        }
        let row = ids.row(0).to_vec();
        let alone = Generation::padded(
            &model,
            &tokenizer,
            &row,
            Some(mask.row(0).as_slice().unwrap()),
            options,
        )
        .unwrap()
        .map(|step| step.unwrap().id)
        .collect::<Vec<u32>>();
        assert_eq!(alone, expected[0], "alone, chunk {chunk}");
        for (b, ids) in expected.iter().enumerate() {
            assert_eq!(padded.generated(b), &ids[..], "sequence {b}, chunk {chunk}");
        }
    }
}

#[test]
fn a_stopped_sequence_leaves_the_batch_and_the_others_go_on() {
    let (model, tokenizer) = model();
    let n = model.config.n_positions;
    // Sequence 1 fills the context after 3 tokens; sequence 2 stops at a
    // stop string taken from its own free continuation; the others run to
    // max_new_tokens.
    let mut prompts = prompts(4);
    prompts[1] = vec![464; n - 2];
    let options = GenerateOptions {
        max_new_tokens: 10,
        do_sample: true,
        seed: 3,
        stop_at_end_of_text: false,
        ..GenerateOptions::default()
    };
    let free = alone(
        &model,
        &tokenizer,
        &prompts[2..3],
        &GenerateOptions {
            seed: 5,
            ..options.clone()
        },
    );
    let text = tokenizer.decode(&free[0].0[..4]).unwrap();
    let stop: String = text
        .chars()
        .skip(text.chars().count().saturating_sub(2))
        .collect();
    let options = GenerateOptions {
        stop_strings: vec![stop],
        ..options
    };
    let expected = alone(&model, &tokenizer, &prompts, &options);
    assert_eq!(expected[1].1, StopReason::ContextFull);
    assert_eq!(expected[2].1, StopReason::StopString);

    let mut batch = BatchGeneration::new(&model, &tokenizer, &prompts, options).unwrap();
    let mut seen: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut stopped = vec![false; prompts.len()];
    for steps in &mut batch {
        let steps = steps.unwrap();
        let live = stopped.iter().filter(|s| !**s).count();
        assert_eq!(steps.len(), live, "one token per live sequence");
        for step in steps {
            assert!(!stopped[step.index], "sequence {} came back", step.index);
            seen[step.index].push(step.id);
            stopped[step.index] = step.stop.is_some();
        }
    }
    assert!(stopped.iter().all(|&s| s));
    for (b, (ids, reason)) in expected.iter().enumerate() {
        assert_eq!(&seen[b], ids, "sequence {b}");
        assert_eq!(batch.generated(b), &ids[..], "sequence {b}");
        assert_eq!(batch.stop_reason(b), Some(*reason), "sequence {b}");
    }
    assert_eq!(batch.live(), 0);
}

#[test]
fn a_padded_batch_generates_what_the_unpadded_one_does() {
    let (model, tokenizer) = model();
    let prompts = prompts(6);
    let options = GenerateOptions {
        max_new_tokens: 5,
        do_sample: true,
        seed: 9,
        stop_at_end_of_text: false,
        ..GenerateOptions::default()
    };
    let (ids, mask) = left_pad(&prompts, 50256);
    let mut padded =
        BatchGeneration::padded(&model, &tokenizer, &ids, &mask, options.clone()).unwrap();
    for step in &mut padded {
        step.unwrap();
    }
    let expected = generate_batch(&model, &tokenizer, &prompts, &options).unwrap();
    for (b, ids) in expected.iter().enumerate() {
        assert_eq!(padded.generated(b), &ids[..], "sequence {b}");
    }
    let all_padding = Array2::from_elem((1, 2), false);
    let err = BatchGeneration::padded(
        &model,
        &tokenizer,
        &ids.slice(ndarray::s![..1, ..2]).to_owned(),
        &all_padding,
        options,
    )
    .err()
    .expect("an all-padding row is refused");
    assert!(format!("{err:#}").contains("prompt 0"), "{err:#}");
}

#[test]
fn generation_stops_cleanly_when_the_context_is_full() {
    let (model, tokenizer) = model();
    let n = model.config.n_positions;
    let prompt = vec![464u32; n - 3];
    let options = GenerateOptions {
        max_new_tokens: 50,
        stop_at_end_of_text: false,
        ..Default::default()
    };
    let mut generation = Generation::new(&model, &tokenizer, &prompt, options).unwrap();
    let steps: Vec<_> = (&mut generation).collect::<Result<_, _>>().unwrap();
    assert_eq!(
        steps.len(),
        4,
        "the last cached position predicts one more token"
    );
    assert_eq!(generation.stop_reason(), Some(StopReason::ContextFull));

    let too_long = vec![464u32; n + 1];
    let err = Generation::new(&model, &tokenizer, &too_long, GenerateOptions::default())
        .err()
        .expect("a prompt longer than the context is an error");
    assert!(err.to_string().contains("n_positions"), "{err}");
}

#[test]
fn stop_strings_and_end_of_text_end_generation() {
    let (model, tokenizer) = model();
    let prompt = tokenizer.encode("Hello").unwrap();
    let free = GenerateOptions {
        max_new_tokens: 10,
        stop_at_end_of_text: false,
        ..Default::default()
    };
    let (ids, _) = generate(&model, &tokenizer, &prompt, &free).unwrap();
    let text = tokenizer.decode(&ids[..3]).unwrap();
    let stop = text
        .chars()
        .rev()
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<String>();
    let options = GenerateOptions {
        stop_strings: vec![stop.clone()],
        ..free
    };
    let (stopped, reason) = generate(&model, &tokenizer, &prompt, &options).unwrap();
    assert_eq!(reason, StopReason::StopString);
    assert!(
        stopped.len() <= 3,
        "stopped at {stop:?} after {} tokens",
        stopped.len()
    );
}

#[test]
fn streaming_never_prints_half_a_character() {
    let mut stream = TextStream::default();
    let smile = "🙂".as_bytes(); // 4 bytes
    assert_eq!(stream.push(&smile[..1]), "");
    assert_eq!(stream.push(&smile[1..3]), "");
    assert_eq!(stream.push(&[smile[3], b'!']), "🙂!");
    assert_eq!(
        stream.push(&[0xff, b'a']),
        "\u{fffd}a",
        "invalid bytes become U+FFFD"
    );
    assert_eq!(stream.push(&"é".as_bytes()[..1]), "");
    assert_eq!(
        stream.finish(),
        "\u{fffd}",
        "an unfinished character at the end"
    );
}

#[test]
fn meaningless_options_are_refused_with_a_reason() {
    let (model, tokenizer) = model();
    let prompt = tokenizer.encode("Hello").unwrap();
    let cases = [
        (
            GenerateOptions {
                max_new_tokens: 0,
                ..Default::default()
            },
            "max_new_tokens",
        ),
        (
            GenerateOptions {
                temperature: 0.0,
                ..Default::default()
            },
            "temperature",
        ),
        (
            GenerateOptions {
                prefill_chunk: Some(0),
                ..Default::default()
            },
            "prefill_chunk",
        ),
        (
            GenerateOptions {
                temperature: -1.0,
                ..Default::default()
            },
            "temperature",
        ),
        (
            GenerateOptions {
                top_k: Some(0),
                ..Default::default()
            },
            "top_k",
        ),
        (
            GenerateOptions {
                top_p: Some(0.0),
                ..Default::default()
            },
            "top_p",
        ),
        (
            GenerateOptions {
                top_p: Some(1.5),
                ..Default::default()
            },
            "top_p",
        ),
        (
            GenerateOptions {
                repetition_penalty: Some(0.0),
                ..Default::default()
            },
            "repetition_penalty",
        ),
    ];
    for (options, word) in cases {
        let err = generate(&model, &tokenizer, &prompt, &options)
            .unwrap_err()
            .to_string();
        assert!(err.contains(word), "expected {word:?} in {err}");
    }
    let err = generate(&model, &tokenizer, &[], &GenerateOptions::default()).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let err = generate(&model, &tokenizer, &[50257], &GenerateOptions::default()).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}

/// A cache made with room for the whole sequence is filled in place (its
/// keys never move, its capacity never changes) and gives the bits of a
/// cache that grows step by step; a cache of another width is refused.
#[test]
fn a_reserved_cache_fills_in_place_and_changes_nothing() {
    let (model, _) = model();
    let prompt = [464u32, 3290, 318, 257];
    let new = 6;
    let mut grown = KvCache::new(model.config.n_layer);
    let mut reserved = KvCache::with_capacity(&model.config, prompt.len() + new);
    assert_eq!(reserved.capacity(), prompt.len() + new);
    assert_eq!(grown.capacity(), 0);
    let step = |ids: &[u32], cache: &mut KvCache| {
        model
            .forward_step(ids, None, cache, Logits::Last, &mut Trace::off())
            .unwrap()
    };
    let (a, b) = (step(&prompt, &mut grown), step(&prompt, &mut reserved));
    assert_eq!(a, b);
    let keys_at = reserved.keys_values(0).0.as_ptr();
    let mut next = gpt2_ndarray::generate::argmax(a.row(0)) as u32;
    for _ in 0..new {
        let (a, b) = (step(&[next], &mut grown), step(&[next], &mut reserved));
        assert_eq!(a, b, "the same logits, bit for bit");
        next = gpt2_ndarray::generate::argmax(a.row(0)) as u32;
    }
    assert_eq!(reserved.len(), prompt.len() + new);
    assert_eq!(reserved.capacity(), prompt.len() + new);
    assert_eq!(
        reserved.keys_values(0).0.as_ptr(),
        keys_at,
        "the keys moved"
    );
    for layer in 0..model.config.n_layer {
        assert_eq!(grown.keys_values(layer), reserved.keys_values(layer));
    }

    let mut config = model.config.clone();
    config.n_embd *= 2;
    let mut foreign = KvCache::with_capacity(&config, 4);
    let err = model
        .forward_step(&prompt, None, &mut foreign, Logits::Last, &mut Trace::off())
        .unwrap_err();
    assert!(err.to_string().contains("width"), "{err}");
}
