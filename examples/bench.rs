//! Benchmark on a GPT-2-small-shaped model with random weights (124M
//! parameters, fp32), written to a temporary safetensors directory and never
//! committed. Measures the machine too, and prints every figure as a fraction
//! of its limit, as a table and as JSON.
//!
//! ```text
//! cargo run --release --example bench                     # 1 and 2 threads
//! cargo run --release --example bench -- --threads 2 --json target/bench-rust.json
//! cargo run --release --example bench -- --threads 2 --batched-decoding-only
//! cargo run --release --example bench -- --threads 2 --case decode-profile
//! GPT2_NDARRAY_SIMD=avx2 cargo run --release --example bench   # a lower SIMD level
//! ```
//!
//! It prints the instruction set each kernel ran with (`gemm::kernel_paths`):
//! a figure means nothing without its CPU.

mod common;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use gpt2_ndarray::generate::{generate, generate_batch, GenerateOptions, Rng};
use gpt2_ndarray::kernels::conv1d;
use gpt2_ndarray::kernels::fastmath::sum_lanes;
use gpt2_ndarray::kernels::gemm::{kernel_paths, matmul_into, Output};
use gpt2_ndarray::weights::Stored;
use gpt2_ndarray::{Config, Dtype, Gpt2, Tokenizer};
use half::slice::HalfFloatSliceExt;
use indicatif::ProgressBar;
use ndarray::Array2;
use rayon::prelude::*;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    /// Thread counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 2])]
    threads: Vec<usize>,
    /// Write the results as JSON here.
    #[arg(long, default_value = "target/bench-rust.json")]
    json: PathBuf,
    /// Fewer repetitions (for a quick look).
    #[arg(long)]
    quick: bool,
    /// Only the batched decoding cases (B = 1, 4, 8, 32), for each dtype of
    /// --dtypes, written to `target/bench-rust-batched.json` unless --json
    /// says where.
    #[arg(long)]
    batched_decoding_only: bool,
    /// Run only these cases, comma-separated: first-logits, prefill, decode,
    /// batch, decode-profile (where a decoding step's time goes, against the
    /// read bandwidth of the weights where they lie), memory (the peak-memory
    /// probe), alternated (each half dtype against f32 in alternating rounds).
    #[arg(long)]
    case: Option<String>,
    /// The dtypes to keep the weights in, each its own run on the same random
    /// model (converted once, before measuring, and written as its own
    /// safetensors file, so that it loads as stored).
    #[arg(long, value_delimiter = ',', default_values_t = vec![Dtype::F32, Dtype::F16, Dtype::BF16])]
    dtypes: Vec<Dtype>,
    /// Internal: measure peak memory of load + T=1024 prefill + 128 tokens in this process.
    #[arg(long, hide = true)]
    rss_probe: Option<PathBuf>,
    /// Internal: the dtype of the key/value cache of the memory probe.
    #[arg(long, hide = true, default_value = "f32")]
    rss_probe_kv_cache: Dtype,
}

const PREFILL: [usize; 5] = [1, 16, 128, 512, 1024];
const DECODE_PROMPT: usize = 16;
const DECODE_NEW: usize = 128;
const BATCH: (usize, usize) = (8, 128);
/// Steps of the progress bar per thread count: the machine twice, first
/// logits, each prefill, decoding, the batch and batched decoding.
const STEPS: usize = 2 + 1 + PREFILL.len() + 1 + 1 + 1;
/// Batched greedy decoding: batch sizes, new tokens per prompt, and prompt
/// lengths (prompt `b` has `10 + b % 5` tokens, ~12 on average: a ragged
/// batch, left-padded on the transformers side).
const BATCHED_DECODING: [usize; 4] = [1, 4, 8, 32];
const BATCHED_NEW: usize = 64;

/// Rounds of the alternated half-versus-f32 measurement.
const ALTERNATED_ROUNDS: usize = 5;

fn batched_prompt_len(b: usize) -> usize {
    10 + b % 5
}

fn main() -> ExitCode {
    common::run(try_main)
}

fn try_main() -> Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.rss_probe {
        return rss_probe(dir, args.rss_probe_kv_cache);
    }
    let dir = std::env::temp_dir().join(format!("gpt2-ndarray-bench-{}", std::process::id()));
    eprintln!(
        "writing a random GPT-2 small (124M parameters, f32) to {}",
        dir.display()
    );
    common::write_random_gpt2(&dir)?;
    let result = write_converted(&dir, &args.dtypes)
        .and_then(|()| {
            for &dtype in &args.dtypes {
                evict_from_page_cache(&dir_of(&dir, dtype).join("model.safetensors"))?;
            }
            Ok(())
        })
        .and_then(|()| run(&args, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Where the random model is stored as `dtype`: `dir` itself for f32, else a
/// subdirectory `dtype/` that [`write_converted`] fills.
fn dir_of(dir: &Path, dtype: Dtype) -> PathBuf {
    match dtype {
        Dtype::F32 => dir.to_path_buf(),
        other => dir.join(other.to_string()),
    }
}

/// Drop a model file the bench has just written from the page cache, so that
/// the bench loads it from disk, as a model is loaded that was not written a
/// moment ago: its pages then come into the cache (and the map) in 2 MB
/// pages, which the loader asks for (`checkpoint/safetensors.rs`), where a
/// file just written keeps whatever pages its writes left (79% of GPT-2
/// small in 2 MB pages after the crate's own writer, none after `cp`).
/// Decoding reads its weights 3–7% faster from 2 MB pages than from 4 KB
/// ones on the machines of `docs/bench.md` (section "Huge pages"). Linux
/// only; elsewhere nothing.
fn evict_from_page_cache(path: &Path) -> Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // Written back first: only clean pages can be dropped.
    file.sync_all()
        .with_context(|| format!("cannot write {} back to disk", path.display()))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `posix_fadvise` reads its four integer arguments and
        // nothing else; the descriptor stays open (owned by `file`) for the
        // whole call.
        let err = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        anyhow::ensure!(
            err == 0,
            "cannot drop {} from the page cache: {}",
            path.display(),
            std::io::Error::from_raw_os_error(err)
        );
    }
    Ok(())
}

/// The random model of `dir` converted to each half dtype of `dtypes`
/// (`Gpt2::save_safetensors`), with its config.
fn write_converted(dir: &Path, dtypes: &[Dtype]) -> Result<()> {
    let model = Gpt2::from_dir(dir)?;
    for &dtype in dtypes.iter().filter(|&&d| d != Dtype::F32) {
        let out = dir_of(dir, dtype);
        std::fs::create_dir_all(&out)?;
        std::fs::copy(dir.join("config.json"), out.join("config.json"))?;
        model.save_safetensors(&out.join("model.safetensors"), dtype)?;
    }
    Ok(())
}

fn run(args: &Args, dir: &Path) -> Result<()> {
    let tokenizer =
        Tokenizer::from_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(common::GOLDEN))?;
    let reps = if args.quick { 1 } else { 3 };
    if args.batched_decoding_only {
        let mut runs = Vec::new();
        for &threads in &args.threads {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?;
            for &dtype in &args.dtypes {
                let model = Gpt2::from_dir(dir_of(dir, dtype))?;
                eprintln!("measuring batched decoding, {dtype}, with {threads} thread(s)...");
                let cases = pool.install(|| batched_decoding(&model, &tokenizer, reps))?;
                runs.push(json!({"threads": threads, "dtype": dtype.to_string(),
                                 "batched_decoding": cases}));
            }
        }
        let report = json!({"model": "gpt2 (124M, random weights, safetensors)", "runs": runs});
        print_batched(&report);
        let path = if args.json == Path::new("target/bench-rust.json") {
            PathBuf::from("target/bench-rust-batched.json")
        } else {
            args.json.clone()
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("JSON written to {}", path.display());
        return Ok(());
    }
    const CASES: [&str; 7] = [
        "first-logits",
        "prefill",
        "decode",
        "batch",
        "decode-profile",
        "memory",
        "alternated",
    ];
    for case in args.case.iter().flat_map(|c| c.split(',')) {
        anyhow::ensure!(
            CASES.contains(&case),
            "no case {case:?}: the cases are {}",
            CASES.join(", ")
        );
    }
    let paths: serde_json::Map<String, Value> = kernel_paths()
        .into_iter()
        .map(|(kernel, isa)| (kernel.to_string(), Value::from(isa)))
        .collect();
    eprintln!("kernels: {paths:?}");
    let mut runs = Vec::new();
    // Drawn between measurements only (no ticking thread to disturb them).
    let bar = common::progress((args.threads.len() * args.dtypes.len() * STEPS + 1) as u64);
    for &threads in &args.threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        // The dtypes back to back at each thread count: their ratios are
        // measured minutes apart, not a whole run apart.
        for &dtype in &args.dtypes {
            bar.suspend(|| eprintln!("measuring {dtype} with {threads} thread(s)..."));
            let case = args.case.as_deref();
            let d = dir_of(dir, dtype);
            runs.push(pool.install(|| measure(&d, dtype, &tokenizer, threads, reps, case, &bar))?);
        }
    }
    let wanted = |name: &str| {
        args.case
            .as_ref()
            .is_none_or(|c| c.split(',').any(|c| c == name))
    };
    let alternated = match args.threads.iter().max() {
        Some(&threads) if wanted("alternated") && args.dtypes.len() > 1 => {
            bar.set_message("the dtypes alternated");
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?;
            let rounds = if args.quick { 2 } else { ALTERNATED_ROUNDS };
            let by_round =
                pool.install(|| alternated(dir, &args.dtypes, &tokenizer, rounds, &bar))?;
            json!({"threads": threads, "rounds": by_round})
        }
        _ => Value::Null,
    };
    bar.set_message("peak memory");
    let mut rss_by_dtype = serde_json::Map::new();
    let mut rss_half_cache = serde_json::Map::new();
    if wanted("memory") {
        for &dtype in &args.dtypes {
            let dir = dir_of(dir, dtype);
            rss_by_dtype.insert(
                dtype.to_string(),
                json!(peak_rss_of_probe(&dir, Dtype::F32)?),
            );
            if dtype != Dtype::F32 {
                rss_half_cache.insert(dtype.to_string(), json!(peak_rss_of_probe(&dir, dtype)?));
            }
        }
    }
    let rss = rss_by_dtype
        .get("f32")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    bar.finish_and_clear();
    let report = json!({
        "model": "gpt2 (124M, random weights, f32, safetensors)",
        "cpu": cpu_name(),
        "kernels": paths,
        "runs": runs,
        "peak_rss_mb": rss,
        "peak_rss_mb_by_dtype": rss_by_dtype,
        "peak_rss_mb_half_cache_by_dtype": rss_half_cache,
        "alternated": alternated,
    });
    print_table(&report);
    print_alternated(&report["alternated"]);
    if let Some(parent) = args.json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    eprintln!("JSON written to {}", args.json.display());
    Ok(())
}

/// Everything at one thread count, with the weights kept as `dtype` (the
/// model stored so in `dir`).
#[allow(clippy::too_many_arguments)]
fn measure(
    dir: &Path,
    dtype: Dtype,
    tokenizer: &Tokenizer,
    threads: usize,
    reps: usize,
    case: Option<&str>,
    bar: &ProgressBar,
) -> Result<Value> {
    let want = |name: &str| case.is_none_or(|c| c.split(',').any(|c| c == name));
    let step = |what: &str| bar.set_message(format!("{threads} thread(s): {what}"));
    // The machine is measured before and after the model, and its limit is
    // the better of the two readings: on a shared machine a limit read at a
    // slow moment would flatter every fraction below.
    step("machine");
    let machine_before = (read_bandwidth_gbs(), matmul_gflops());
    let bandwidth_4k_before = read_bandwidth_of(probe_buffer_4k());
    bar.inc(1);

    step("time to first logits");
    let ttfl = best_of(if want("first-logits") { reps } else { 0 }, || {
        let model = Gpt2::from_dir(dir).expect("load");
        model.next_token_logits(&[464]).expect("forward");
    });
    bar.inc(1);
    let model = Gpt2::from_dir(dir)?;
    anyhow::ensure!(
        model.dtype() == Some(dtype),
        "{} holds no {dtype} model",
        dir.display()
    );
    let cfg = model.config.clone();
    let mut rng = Rng::new(1);
    let mut ids = |n: usize| {
        (0..n)
            .map(|_| (rng.next_u64() % 50000) as u32)
            .collect::<Vec<_>>()
    };

    let mut prefill_secs = Vec::new();
    for t in PREFILL.into_iter().filter(|_| want("prefill")) {
        step(&format!("prefill T={t}"));
        let prompt = ids(t);
        let secs = best_of(if t >= 512 { reps.min(2) } else { reps }, || {
            model.next_token_logits(&prompt).expect("prefill");
        });
        prefill_secs.push((t, secs.as_secs_f64()));
        bar.inc(1);
    }

    step("decode");
    let prompt = ids(DECODE_PROMPT);
    let options = GenerateOptions {
        max_new_tokens: DECODE_NEW,
        stop_at_end_of_text: false,
        ..GenerateOptions::default()
    };
    let decode_reps = if want("decode") { reps.min(2) } else { 0 };
    let decode = best_of(decode_reps, || {
        generate(&model, tokenizer, &prompt, &options).expect("generate");
    });
    // The prefill of the 16-token prompt is part of `generate`; take it out.
    let prompt_secs = best_of(if want("decode") { reps } else { 0 }, || {
        model.next_token_logits(&prompt).expect("prefill");
    });
    let per_token = (decode - prompt_secs).as_secs_f64() / DECODE_NEW as f64;
    bar.inc(1);

    step("batched prefill");
    let (b, t) = BATCH;
    let batch_ids = Array2::from_shape_vec((b, t), ids(b * t))?;
    let mask = Array2::from_elem((b, t), true);
    let batch = best_of(if want("batch") { reps.min(2) } else { 0 }, || {
        model
            .forward_batch_with(&batch_ids, &mask, gpt2_ndarray::Logits::Last)
            .expect("batch");
    })
    .as_secs_f64();
    let batch_flops = b as f64 * prefill_flops(&cfg, t);
    bar.inc(1);

    step("batched decoding");
    // Batched decoding: f32 only.
    let batched = match case {
        None if dtype == Dtype::F32 => batched_decoding(&model, tokenizer, reps)?,
        _ => Value::Null,
    };
    bar.inc(1);

    let profile = if want("decode-profile") {
        step("decode profile");
        decode_profile(&model, reps)
    } else {
        Value::Null
    };

    step("machine");
    let machine_after = (read_bandwidth_gbs(), matmul_gflops());
    let bandwidth_4k = bandwidth_4k_before.max(read_bandwidth_of(probe_buffer_4k()));
    bar.inc(1);
    let bandwidth = machine_before.0.max(machine_after.0);
    let gflops = machine_before.1.max(machine_after.1);
    let bytes_per_token = decode_bytes_per_token(&model);
    let limit_tok_s = bandwidth * 1e9 / bytes_per_token;
    let mut prefill = serde_json::Map::new();
    for (t, secs) in prefill_secs {
        let flops = prefill_flops(&cfg, t);
        prefill.insert(
            t.to_string(),
            json!({"seconds": secs, "gflop": flops / 1e9, "fraction_of_matmul_rate": flops / secs / (gflops * 1e9)}),
        );
    }

    Ok(json!({
        "threads": threads,
        "dtype": dtype.to_string(),
        "weight_bytes": model.weight_bytes(),
        "decode_bytes_per_token": bytes_per_token,
        "machine": {
            "read_bandwidth_gbs": bandwidth, "matmul_gflops": gflops,
            "read_bandwidth_4k_gbs": bandwidth_4k,
            "readings": {"before": [machine_before.0, machine_before.1], "after": [machine_after.0, machine_after.1]},
        },
        "time_to_first_logits_ms": ttfl.as_secs_f64() * 1e3,
        "prefill": prefill,
        "decode": {
            "prompt": DECODE_PROMPT, "new_tokens": DECODE_NEW,
            "tokens_per_second": 1.0 / per_token,
            "ms_per_token": per_token * 1e3,
            "bandwidth_limit_tokens_per_second": limit_tok_s,
            "fraction_of_bandwidth_limit": (1.0 / per_token) / limit_tok_s,
        },
        "batched_prefill": {"batch": b, "t": t, "seconds": batch, "gflop": batch_flops / 1e9, "fraction_of_matmul_rate": batch_flops / batch / (gflops * 1e9)},
        "batched_decoding": batched,
        "decode_profile": profile,
    }))
}

/// Bytes the decode case reads per generated token, on average: every
/// decoding step reads the weights as stored (the matrices in their dtype,
/// the few vectors as `f32`) and the key/value cache its query attends over
/// (`generate`'s default cache, `f32`). After the prefill of the
/// [`DECODE_PROMPT`]-token prompt, step `s` of the `DECODE_NEW - 1` that
/// follow attends over `DECODE_PROMPT + s` positions, each `n_layer × 2 ×
/// n_embd` values (5.9 MB a token for GPT-2 small: 1.2% of its `f32`
/// weights, 2.4% of its half ones); the time per token divides the whole
/// decoding by `DECODE_NEW`, and so do these bytes.
fn decode_bytes_per_token(model: &Gpt2) -> f64 {
    let cfg = &model.config;
    let per_position = cfg.n_layer * 2 * cfg.n_embd * GenerateOptions::default().kv_cache.size();
    let positions: usize = (1..DECODE_NEW).map(|s| DECODE_PROMPT + s).sum();
    model.weight_bytes() as f64 + (positions * per_position) as f64 / DECODE_NEW as f64
}

/// Every dtype of `dtypes` in alternation, `rounds` times: each round
/// measures, one dtype after the other, decoding (`generate`, the same 16 +
/// 128 tokens as the decode case, the prompt's prefill taken out) with the
/// read bandwidth just before and after it, then prefill at T = 128 and
/// T = 1024. A shared host that slows down for a while then slows the dtypes
/// of one round alike, so each round gives ratios of its own (a dtype's runs
/// one after the other, minutes apart, do not). Every round is kept.
fn alternated(
    dir: &Path,
    dtypes: &[Dtype],
    tokenizer: &Tokenizer,
    rounds: usize,
    bar: &ProgressBar,
) -> Result<Vec<Value>> {
    let models = dtypes
        .iter()
        .map(|&d| Ok((d, Gpt2::from_dir(dir_of(dir, d))?)))
        .collect::<Result<Vec<_>>>()?;
    let mut rng = Rng::new(3);
    let mut ids = |n: usize| {
        (0..n)
            .map(|_| (rng.next_u64() % 50000) as u32)
            .collect::<Vec<u32>>()
    };
    let (p_decode, p128, p1024) = (ids(DECODE_PROMPT), ids(128), ids(1024));
    let options = GenerateOptions {
        max_new_tokens: DECODE_NEW,
        stop_at_end_of_text: false,
        ..GenerateOptions::default()
    };
    let mut by_round = Vec::new();
    for r in 0..rounds {
        bar.set_message(format!("the dtypes alternated, round {}/{rounds}", r + 1));
        let mut round = serde_json::Map::new();
        for (dtype, model) in &models {
            let prefill = |prompt: &[u32], reps: usize| {
                best_of(reps, || {
                    model.next_token_logits(prompt).expect("prefill");
                })
                .as_secs_f64()
            };
            let before = read_bandwidth_gbs();
            let start = Instant::now();
            generate(model, tokenizer, &p_decode, &options)?;
            let decode = start.elapsed().as_secs_f64();
            let after = read_bandwidth_gbs();
            let per_token = (decode - prefill(&p_decode, 3)) / DECODE_NEW as f64;
            // The better reading of the two: never flattering the fraction.
            let bandwidth = before.max(after);
            round.insert(
                dtype.to_string(),
                json!({
                    "decode_ms_per_token": per_token * 1e3,
                    "read_bandwidth_gbs": bandwidth,
                    "fraction_of_bandwidth": decode_bytes_per_token(model) / per_token / (bandwidth * 1e9),
                    "prefill_128_ms": prefill(&p128, 3) * 1e3,
                    "prefill_1024_ms": prefill(&p1024, 1) * 1e3,
                }),
            );
        }
        by_round.push(Value::Object(round));
    }
    Ok(by_round)
}

/// The median of some numbers (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The alternated rounds' ratios to f32, each a median over the rounds.
fn print_alternated(alternated: &Value) {
    let Some(rounds) = alternated["rounds"].as_array() else {
        return;
    };
    let of = |round: &Value, dtype: &str, key: &str| round[dtype][key].as_f64();
    let over_rounds =
        |f: &dyn Fn(&Value) -> Option<f64>| median(rounds.iter().filter_map(f).collect());
    println!(
        "
the dtypes alternated, {} round(s), {} thread(s): medians of the rounds",
        rounds.len(),
        alternated["threads"]
    );
    println!(
        "  {:<6} {:>14} {:>14} {:>16} {:>16}",
        "dtype", "decode ÷ f32", "of bandwidth", "T=128 ÷ f32", "T=1024 ÷ f32"
    );
    let dtypes = rounds[0]
        .as_object()
        .map(|o| o.keys().cloned().collect::<Vec<_>>());
    for dtype in dtypes.into_iter().flatten() {
        let ratio = |key: &str, speed: bool| {
            over_rounds(&|r| {
                let (x, f32) = (of(r, &dtype, key)?, of(r, "f32", key)?);
                Some(if speed { f32 / x } else { x / f32 })
            })
        };
        println!(
            "  {:<6} {:>13.2}× {:>14.2} {:>15.2}× {:>15.2}×",
            dtype,
            ratio("decode_ms_per_token", true),
            over_rounds(&|r| of(r, &dtype, "fraction_of_bandwidth")),
            ratio("prefill_128_ms", false),
            ratio("prefill_1024_ms", false),
        );
    }
}

/// Batched greedy decoding through the public API (`generate_batch`):
/// `BATCHED_NEW` tokens for each of B ragged prompts, prefill included; the
/// figure is the tokens generated over the whole call's time. The batch
/// sizes are measured in turn, `rounds` times (one call each per round), so
/// that each round's ratios to B = 1 come from the same minute of a shared
/// host; each case keeps every round's figure and its best.
fn batched_decoding(model: &Gpt2, tokenizer: &Tokenizer, rounds: usize) -> Result<Value> {
    let options = GenerateOptions {
        max_new_tokens: BATCHED_NEW,
        stop_at_end_of_text: false,
        ..GenerateOptions::default()
    };
    let mut rng = Rng::new(7);
    let prompts: Vec<Vec<Vec<u32>>> = BATCHED_DECODING
        .iter()
        .map(|&b| {
            (0..b)
                .map(|i| {
                    (0..batched_prompt_len(i))
                        .map(|_| (rng.next_u64() % 50000) as u32)
                        .collect()
                })
                .collect()
        })
        .collect();
    let mut per_round = vec![Vec::new(); BATCHED_DECODING.len()];
    for round in 0..rounds.max(1) {
        for ((&b, prompts), figures) in BATCHED_DECODING.iter().zip(&prompts).zip(&mut per_round) {
            let start = Instant::now();
            let out = generate_batch(model, tokenizer, prompts, &options)?;
            let secs = start.elapsed().as_secs_f64();
            let generated: usize = out.iter().map(Vec::len).sum();
            anyhow::ensure!(generated == b * BATCHED_NEW, "generated {generated} tokens");
            eprintln!(
                "  round {}, B={b}: {:.1} tok/s",
                round + 1,
                generated as f64 / secs
            );
            figures.push(generated as f64 / secs);
        }
    }
    let mut cases = serde_json::Map::new();
    for (&b, figures) in BATCHED_DECODING.iter().zip(&per_round) {
        let best = figures.iter().copied().fold(0.0, f64::max);
        cases.insert(
            b.to_string(),
            json!({"batch": b, "new_tokens": BATCHED_NEW,
                   "seconds": (b * BATCHED_NEW) as f64 / best, "tokens_per_second": best,
                   "rounds_tokens_per_second": figures}),
        );
    }
    Ok(Value::Object(cases))
}

fn print_batched(report: &Value) {
    println!(
        "\nbatched greedy decoding (generate_batch, {BATCHED_NEW} new tokens, ~12-token prompts)"
    );
    for run in report["runs"].as_array().into_iter().flatten() {
        let cases = &run["batched_decoding"];
        if cases.is_null() {
            continue;
        }
        let figures = |b: usize| -> Vec<f64> {
            let rounds = cases[b.to_string()]["rounds_tokens_per_second"].as_array();
            rounds
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect()
        };
        let single = figures(1);
        let dtype = run["dtype"].as_str().unwrap_or_default();
        println!("\n{} thread(s), {dtype} weights", run["threads"]);
        println!(
            "  {:<8} {:>10} {:>10}   each round: tok/s (÷ that round's B=1)",
            "batch", "best tok/s", "vs B=1"
        );
        for b in BATCHED_DECODING {
            let rounds = figures(b);
            let best = rounds.iter().copied().fold(0.0, f64::max);
            let ratios: Vec<f64> = rounds.iter().zip(&single).map(|(x, one)| x / one).collect();
            let each: Vec<String> = rounds
                .iter()
                .zip(ratios.clone())
                .map(|(x, r)| format!("{x:.1} ({r:.2}×)"))
                .collect();
            println!(
                "  {:<8} {:>10.1} {:>9.2}×   {}; median {:.2}×",
                format!("B={b}"),
                best,
                best / single.iter().copied().fold(0.0, f64::max),
                each.join(", "),
                median(ratios)
            );
        }
    }
}

/// FLOPs of a prefill of `t` tokens to the last position's logits: every
/// weight matrix of the blocks once per token (2 FLOPs per weight), the causal
/// attention (`q·kᵀ` and `p·v` over the visible half), and the head once.
fn prefill_flops(c: &Config, t: usize) -> f64 {
    let (t, e, f, l) = (
        t as f64,
        c.n_embd as f64,
        c.n_inner as f64,
        c.n_layer as f64,
    );
    let weights = l * (e * 3.0 * e + e * e + 2.0 * e * f);
    let attention = l * 2.0 * 2.0 * e * t * (t + 1.0) / 2.0;
    2.0 * weights * t + attention + 2.0 * c.vocab_size as f64 * e
}

/// The best time of `reps` runs of `f` (zero for no run: a skipped case).
fn best_of(reps: usize, mut f: impl FnMut()) -> Duration {
    (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// Where one decoding step's time goes, at the pool's thread count (best of
/// many repetitions of each, in ms), against reading the same bytes:
///
/// - `read_weights`: summing every weight matrix a step multiplies, where it
///   lies (the memory-mapped checkpoint), as the read-bandwidth measurement
///   sums its buffer (one parallel sum per matrix);
/// - `read_weights_copy`: the same, over a copy of those matrices in fresh
///   (anonymous) memory, one allocation each, made once before timing;
/// - `read_probe`: the read-bandwidth measurement's own 1 GiB buffer (one
///   parallel sum over all of it), as the time it would take for the
///   weights' bytes;
/// - `gemv_*`: the step's products alone, one row × each weight
///   (`c_attn`, `attn.c_proj`, `c_fc`, `mlp.c_proj` of all blocks; the head),
///   in the order a step runs them, from the fastest pass;
/// - `step`: a whole decoding step (`forward_step` with the cache, a token
///   after 128 cached ones in the first pass, one more in each pass after),
///   whose rest is attention, layer norms, GELU, residuals and the joins
///   between them.
///
/// The products and the three readings take turns within each pass, so
/// that a host whose bandwidth moves from one minute to the next (a shared
/// one) moves them alike; each keeps its fastest. The readings split the
/// gap between decoding and the bench's bandwidth figure into where the
/// weights lie (a file's pages against fresh memory), reading them a matrix
/// at a time (a parallel sum each, against one over a single buffer), and
/// the products' own work.
fn decode_profile(model: &Gpt2, reps: usize) -> Value {
    let reps = reps * 10;
    let c = model.config.n_embd;
    let x = Array2::from_elem((1, c), 0.5f32);
    let hidden = Array2::from_elem((1, model.config.n_inner), 0.5f32);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    type Layer = fn(&gpt2_ndarray::model::Block) -> &gpt2_ndarray::weights::Conv1D;
    let kinds: [(&str, Layer); 4] = [
        ("c_attn", |b| &b.attn.c_attn),
        ("attn.c_proj", |b| &b.attn.c_proj),
        ("c_fc", |b| &b.mlp.c_fc),
        ("mlp.c_proj", |b| &b.mlp.c_proj),
    ];
    let mut out = serde_json::Map::new();
    let mut matrices: Vec<&gpt2_ndarray::weights::Matrix> = Vec::new();
    for (_, layer) in kinds {
        matrices.extend(model.h.iter().map(|block| &layer(block).weight));
    }
    matrices.push(&model.wte);
    let bytes: usize = matrices.iter().map(|w| w.stored_bytes()).sum();
    let all_weights: Vec<Stored<'_>> = matrices.iter().map(|w| w.stored()).collect();
    let past: Vec<u32> = (0..128).collect();
    let mut cache = gpt2_ndarray::KvCache::with_capacity(&model.config, past.len() + reps);
    let mut trace = gpt2_ndarray::Trace::off();
    let logits = gpt2_ndarray::Logits::Last;
    model
        .forward_step(&past, None, &mut cache, logits, &mut trace)
        .expect("prompt");
    let copies: Vec<Copied> = all_weights.iter().map(|&w| Copied::of(w)).collect();
    let read = |weights: &mut dyn Iterator<Item = Stored<'_>>| {
        let start = Instant::now();
        for w in weights {
            std::hint::black_box(read_all(w));
        }
        start.elapsed()
    };
    // Each pass: the products in the order a step reads them, each timed
    // (per kind over all blocks, and the head: each kind timed over and
    // over on its own would be read from the L3 cache where it fits, all
    // blocks' `attn.c_proj` being 28 MB in f32, which a step, reading every
    // weight in turn, never does); then the three readings; then a whole
    // step on the one cache, reserved for every pass (as `generate`
    // reserves it), so that each step appends its position in place, as
    // decoding does. (Each step once ran on a copy of the cache made just
    // before it, whose megabytes of freshly written lines the step then
    // wrote back: in a timeline of 60 such steps the head's median read
    // 0.77 of the bandwidth instead of 0.97, though the fastest of 30 steps
    // here was level either way.)
    let (mut reads, mut step) = ([Duration::MAX; 3], Duration::MAX);
    let passes: Vec<[Duration; 5]> = (0..reps)
        .map(|_| {
            let mut times = [Duration::ZERO; 5];
            for block in &model.h {
                for (time, (name, layer)) in times.iter_mut().zip(kinds) {
                    let input = if name == "mlp.c_proj" { &hidden } else { &x };
                    let start = Instant::now();
                    std::hint::black_box(conv1d(input.view(), layer(block)));
                    *time += start.elapsed();
                }
            }
            let start = Instant::now();
            std::hint::black_box(model.head(x.view()));
            times[4] = start.elapsed();
            let readings = [
                read(&mut all_weights.iter().copied()),
                read(&mut copies.iter().map(Copied::stored)),
                probe_once(),
            ];
            for (best, now) in reads.iter_mut().zip(readings) {
                *best = (*best).min(now);
            }
            let start = Instant::now();
            model
                .forward_step(&[7], None, &mut cache, logits, &mut trace)
                .expect("step");
            step = step.min(start.elapsed());
            times
        })
        .collect();
    let fastest = passes
        .iter()
        .min_by_key(|times| times.iter().sum::<Duration>())
        .expect("at least one pass");
    let names = kinds.map(|(name, _)| name);
    for (name, &time) in names.iter().chain(&["head"]).zip(fastest) {
        out.insert(format!("gemv_{name}_ms"), json!(ms(time)));
    }
    let gemv_total = ms(fastest.iter().sum());
    out.insert("gemv_total_ms".into(), json!(gemv_total));
    let gbs = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e9;
    for (name, time) in [("read_weights", reads[0]), ("read_weights_copy", reads[1])] {
        out.insert(format!("{name}_ms"), json!(ms(time)));
        out.insert(format!("{name}_gbs"), json!(gbs(time)));
    }
    let probe_gbs = (probe_buffer().len() * 4) as f64 / reads[2].as_secs_f64() / 1e9;
    out.insert("read_probe_gbs".into(), json!(probe_gbs));
    out.insert(
        "read_probe_ms".into(),
        json!(bytes as f64 / probe_gbs / 1e6),
    );
    out.insert("weight_bytes".into(), json!(bytes));
    let step_ms = ms(step);
    out.insert("step_ms".into(), json!(step_ms));
    out.insert("rest_ms".into(), json!(step_ms - gemv_total));
    Value::Object(out)
}

/// Read every value of a weight where it lies, in parallel (`f32`s summed as
/// the bandwidth measurement sums them, halves' bits summed as integers).
fn read_all(w: Stored<'_>) -> f32 {
    let bits = |h: &[u16]| -> f32 {
        h.par_chunks(1 << 17)
            .map(|c| c.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b))) as f32)
            .sum()
    };
    match w {
        Stored::F32(w) => parallel_sum(w.as_slice().expect("row-major")),
        Stored::F16(w) => bits(w.as_slice().expect("row-major").reinterpret_cast()),
        Stored::BF16(w) => bits(w.as_slice().expect("row-major").reinterpret_cast()),
    }
}

/// A copy of a stored matrix in fresh memory (one allocation), for
/// [`decode_profile`]'s reading of the weights away from the checkpoint's
/// pages.
enum Copied {
    F32(Array2<f32>),
    F16(Array2<half::f16>),
    BF16(Array2<half::bf16>),
}

impl Copied {
    fn of(w: Stored<'_>) -> Self {
        match w {
            Stored::F32(w) => Copied::F32(w.to_owned()),
            Stored::F16(w) => Copied::F16(w.to_owned()),
            Stored::BF16(w) => Copied::BF16(w.to_owned()),
        }
    }

    fn stored(&self) -> Stored<'_> {
        match self {
            Copied::F32(w) => Stored::F32(w.view()),
            Copied::F16(w) => Stored::F16(w.view()),
            Copied::BF16(w) => Stored::BF16(w.view()),
        }
    }
}

/// The read-bandwidth measurement's buffer: 1 GiB of f32, far larger than
/// the caches, made once, at the first reading (the alternated rounds read
/// the bandwidth six times a round).
///
/// On Linux it asks for transparent huge pages (2 MB; the advice is a hint,
/// refused without changing anything by a kernel that has none), so that the
/// reading is the most this machine reads, whatever pages the weights are
/// in: a model file read from disk at load is mapped in 2 MB pages too
/// (`checkpoint/safetensors.rs`), one just written keeps the pages its
/// writes left (see [`evict_from_page_cache`]). On
/// the virtual machines of `docs/bench.md` the same buffer in 4 KB pages
/// (what this measurement read until 2026-12-04, kept as
/// `read_bandwidth_4k_gbs`) read 32–35 against 35–38 GB/s at the host's
/// slow level and 46–53 against 58–63 at its fast one: each miss of the TLB
/// costs a walk of two page tables there.
fn probe_buffer() -> &'static [f32] {
    static DATA: std::sync::OnceLock<memmap2::MmapMut> = std::sync::OnceLock::new();
    let map = DATA.get_or_init(|| {
        let mut map = memmap2::MmapMut::map_anon(1 << 30).expect("1 GiB for the bandwidth reading");
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        bytemuck::cast_slice_mut::<u8, f32>(&mut map).fill(1.0);
        map
    });
    bytemuck::cast_slice(map)
}

/// [`probe_buffer`] in 4 KB pages (an ordinary `Vec`): the reading the bench
/// took until 2026-12-04, reported beside the other for comparison with the
/// figures of that time.
fn probe_buffer_4k() -> &'static [f32] {
    static DATA: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    DATA.get_or_init(|| vec![1.0f32; 256 << 20])
}

/// `Σ x`, split over the pool's threads in pieces of 256 KB, each summed
/// with the crate's own vectorised sum: how the bench reads memory.
fn parallel_sum(x: &[f32]) -> f32 {
    x.par_chunks(1 << 16).map(sum_lanes).sum()
}

/// One reading of the bandwidth: the time to [`parallel_sum`] the
/// [`probe_buffer`].
fn probe_once() -> Duration {
    probe_once_of(probe_buffer())
}

/// The time to [`parallel_sum`] `data` (made, at the first reading, outside the clock).
fn probe_once_of(data: &[f32]) -> Duration {
    let start = Instant::now();
    std::hint::black_box(parallel_sum(data));
    start.elapsed()
}

/// Read bandwidth: the best of 3 readings ([`probe_once`]), in GB/s.
fn read_bandwidth_gbs() -> f64 {
    read_bandwidth_of(probe_buffer())
}

/// The best of 3 readings of `data`, in GB/s.
fn read_bandwidth_of(data: &[f32]) -> f64 {
    let secs = (0..3)
        .map(|_| probe_once_of(data))
        .min()
        .expect("three readings");
    (data.len() * 4) as f64 / secs.as_secs_f64() / 1e9
}

/// The f32 matmul rate of this crate's GEMM on the MLP's shape
/// (`[1024, 768] · [768, 3072]`) into a reused output, best of 3, in GFLOP/s.
fn matmul_gflops() -> f64 {
    let a = Array2::from_elem((1024, 768), 0.5f32);
    let b = Array2::from_elem((768, 3072), 0.25f32);
    let mut c = Array2::zeros((1024, 3072));
    let secs = best_of(3, || {
        matmul_into(a.view(), b.view(), c.view_mut(), Output::Overwrite);
        std::hint::black_box(&c);
    });
    2.0 * 1024.0 * 768.0 * 3072.0 / secs.as_secs_f64() / 1e9
}

/// The CPU's model name (Linux), for the record.
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Peak resident memory of a child process that loads the model, prefills
/// 1024 tokens and generates 128 (load + the worst prompt + decoding), its
/// key/value cache kept as `kv_cache`.
fn peak_rss_of_probe(dir: &Path, kv_cache: Dtype) -> Result<f64> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("--rss-probe")
        .arg(dir)
        .arg("--rss-probe-kv-cache")
        .arg(kv_cache.to_string())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse::<f64>()
        .with_context(|| format!("rss probe said {text:?}"))
}

fn rss_probe(dir: &Path, kv_cache: Dtype) -> Result<()> {
    let model = Gpt2::from_dir(dir)?;
    let tokenizer =
        Tokenizer::from_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(common::GOLDEN))?;
    let prompt: Vec<u32> = (0..1024 - DECODE_NEW as u32).map(|i| i % 50000).collect();
    model.next_token_logits(&(0..1024).collect::<Vec<u32>>())?;
    let options = GenerateOptions {
        max_new_tokens: DECODE_NEW,
        stop_at_end_of_text: false,
        kv_cache,
        ..Default::default()
    };
    generate(&model, &tokenizer, &prompt, &options)?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")?;
    println!("{}", kb / 1024.0);
    Ok(())
}

fn print_table(report: &Value) {
    println!(
        "\nGPT-2 small (124M, f32), random weights, on {}",
        report["cpu"].as_str().unwrap_or("?")
    );
    println!("kernels:");
    for (kernel, isa) in report["kernels"].as_object().into_iter().flatten() {
        println!("  {kernel:<28} {}", isa.as_str().unwrap_or("?"));
    }
    for run in report["runs"].as_array().into_iter().flatten() {
        let m = &run["machine"];
        println!(
            "\n{} thread(s), {} weights — machine: read {:.1} GB/s (4 KB pages: {:.1}), matmul {:.1} GFLOP/s",
            run["threads"],
            run["dtype"].as_str().unwrap_or("f32"),
            m["read_bandwidth_gbs"].as_f64().unwrap_or(0.0),
            m["read_bandwidth_4k_gbs"].as_f64().unwrap_or(0.0),
            m["matmul_gflops"].as_f64().unwrap_or(0.0)
        );
        println!("  {:<34} {:>12} {:>18}", "case", "result", "of the limit");
        println!(
            "  {:<34} {:>9.1} ms {:>18}",
            "time to first logits",
            run["time_to_first_logits_ms"].as_f64().unwrap_or(0.0),
            ""
        );
        for t in PREFILL.map(|t| t.to_string()) {
            let p = &run["prefill"][&t];
            println!(
                "  {:<34} {:>9.1} ms {:>17.0}%",
                format!("prefill T={t}"),
                p["seconds"].as_f64().unwrap_or(0.0) * 1e3,
                p["fraction_of_matmul_rate"].as_f64().unwrap_or(0.0) * 100.0
            );
        }
        let d = &run["decode"];
        println!(
            "  {:<34} {:>7.1} tok/s {:>17.0}%",
            "decode (16 + 128 tokens, greedy)",
            d["tokens_per_second"].as_f64().unwrap_or(0.0),
            d["fraction_of_bandwidth_limit"].as_f64().unwrap_or(0.0) * 100.0
        );
        if let Some(p) = run["decode_profile"].as_object() {
            println!("  decode profile (ms per step):");
            for (k, v) in p {
                println!("    {k:<30} {:>10.3}", v.as_f64().unwrap_or(0.0));
            }
        }
        let b = &run["batched_prefill"];
        println!(
            "  {:<34} {:>9.1} ms {:>17.0}%",
            "batched prefill 8 x 128",
            b["seconds"].as_f64().unwrap_or(0.0) * 1e3,
            b["fraction_of_matmul_rate"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
    for (dtype, mb) in report["peak_rss_mb_by_dtype"]
        .as_object()
        .into_iter()
        .flatten()
    {
        println!(
            "\npeak resident memory, {dtype} (load + T=1024 prefill + 128 tokens, 2 threads default): {:.0} MB",
            mb.as_f64().unwrap_or(0.0)
        );
    }
    for (dtype, mb) in report["peak_rss_mb_half_cache_by_dtype"]
        .as_object()
        .into_iter()
        .flatten()
    {
        println!(
            "peak resident memory, {dtype} weights and {dtype} key/value cache: {:.0} MB",
            mb.as_f64().unwrap_or(0.0)
        );
    }
    print_batched(report);
}
