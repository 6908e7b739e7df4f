//! Logits are bit-identical across runs and across thread counts.
//!
//! The same weights and ids must give the same logits to the last bit,
//! however many threads compute them: a sampled generation then gives the
//! same text on a laptop and on a server, and a golden test that passes once
//! passes always. Parallel code keeps this property only if every sum is
//! computed in the same order whatever the split of the work; these tests
//! guard it, strictly (`f32::to_bits`, no tolerance).
//!
//! Three computations of the golden model (`golden/model`): the full forward
//! of a ~20-token prompt (every position), the key/value-cached decoding of
//! a few greedy tokens after it, and a left-padded batch of three prompts.
//!
//! All the parallel work (matrix products, heads, rows, element-wise maps)
//! runs on rayon's current pool; the `gemm` crate's GEMM too. So:
//! - a test can install its own pools of 1, 2 and 4 threads
//!   (`rayon::ThreadPoolBuilder::new().num_threads(n).build()?.install(..)`),
//!   which [`logits_are_bit_identical_in_rayon_pools_of_1_2_and_4_threads`] does;
//! - rayon's global pool is sized once per process from `RAYON_NUM_THREADS`:
//!   a test cannot change it after start-up, so
//!   [`logits_are_bit_identical_whatever_the_environment_says`] runs this test
//!   binary again as child processes with it set to 1, 2 and 4, and compares
//!   their fingerprints (a hash of every bit) with its own.
//!
//! The guarantee is for one machine: the GEMM and the element-wise kernels
//! pick their instructions (AVX2/FMA, AVX-512, NEON, ...) from the CPU at run
//! time, and a different GEMM micro-kernel may round differently in the last
//! bits on another CPU (the golden tests' tolerances cover that).
//!
//! By hand, the same check for any setting:
//!
//! ```sh
//! for r in 1 2 4; do
//!   RAYON_NUM_THREADS=$r cargo test --test determinism -- --nocapture 2>&1 | grep fingerprint
//! done
//! ```

use std::path::Path;
use std::process::Command;

use gpt2_ndarray::generate::{argmax, left_pad};
use gpt2_ndarray::{Gpt2, KvCache, Logits, Tokenizer, Trace};
use ndarray::{Array1, Array2, Array3};

/// Every logit the three computations produce.
#[derive(Debug)]
struct AllLogits {
    /// Full forward of the prompt: `[T, vocab]`.
    full: Array2<f32>,
    /// Cached decoding: the prefill's last position, then one row per new token.
    decode: Vec<Array1<f32>>,
    /// Padded batch: `[B, T, vocab]`.
    batch: Array3<f32>,
}

const PROMPT: &str = "The quick brown fox jumps over the lazy dog, and then it runs away into \
                      the dark forest";
const BATCH: [&str; 3] = [
    "Hi",
    "The quick brown fox jumps over",
    "A long time ago, in",
];
const NEW_TOKENS: usize = 4;

fn load() -> (Gpt2, Tokenizer) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/model");
    (
        Gpt2::from_dir(&dir).expect("golden model"),
        Tokenizer::from_dir(&dir).expect("golden tokenizer"),
    )
}

fn compute(model: &Gpt2, tokenizer: &Tokenizer) -> AllLogits {
    let prompt = tokenizer.encode(PROMPT).unwrap();
    assert!((18..=24).contains(&prompt.len()), "{} tokens", prompt.len());
    let full = model.forward(&prompt).unwrap();

    let mut cache = KvCache::new(model.config.n_layer);
    let mut trace = Trace::off();
    let mut step = model
        .forward_step(&prompt, None, &mut cache, Logits::Last, &mut trace)
        .unwrap()
        .row(0)
        .to_owned();
    let mut decode = vec![step.clone()];
    for _ in 0..NEW_TOKENS {
        let next = argmax(step.view()) as u32;
        step = model
            .forward_step(&[next], None, &mut cache, Logits::Last, &mut trace)
            .unwrap()
            .row(0)
            .to_owned();
        decode.push(step.clone());
    }

    let prompts: Vec<Vec<u32>> = BATCH.iter().map(|p| tokenizer.encode(p).unwrap()).collect();
    let (ids, mask) = left_pad(&prompts, tokenizer.end_of_text().unwrap());
    let batch = model.forward_batch(&ids, &mask).unwrap();
    AllLogits {
        full,
        decode,
        batch,
    }
}

/// Every value of `logits`, in a fixed order, with a name for messages.
fn values(logits: &AllLogits) -> Vec<(String, &[f32])> {
    let mut out = vec![(
        "full forward".to_string(),
        logits.full.as_slice().expect("row-major"),
    )];
    for (i, row) in logits.decode.iter().enumerate() {
        out.push((
            format!("cached decode step {i}"),
            row.as_slice().expect("row-major"),
        ));
    }
    out.push((
        "padded batch".to_string(),
        logits.batch.as_slice().expect("row-major"),
    ));
    out
}

/// Fails at the first bit that differs, naming the computation and index.
fn assert_bit_identical(got: &AllLogits, expected: &AllLogits, what: &str) {
    for ((name, g), (_, e)) in values(got).into_iter().zip(values(expected)) {
        assert_eq!(g.len(), e.len(), "{what}: {name}: lengths differ");
        if let Some(i) = (0..g.len()).find(|&i| g[i].to_bits() != e[i].to_bits()) {
            let differing = (0..g.len())
                .filter(|&i| g[i].to_bits() != e[i].to_bits())
                .count();
            panic!(
                "{what}: {name}: element {i} is {} ({:#010x}), expected {} ({:#010x}); \
                 {differing} of {} elements differ",
                g[i],
                g[i].to_bits(),
                e[i],
                e[i].to_bits(),
                g.len()
            );
        }
    }
}

/// FNV-1a over every bit of every logit.
fn fingerprint(logits: &AllLogits) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for (_, slice) in values(logits) {
        for v in slice {
            for byte in v.to_bits().to_le_bytes() {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    hash
}

#[test]
fn logits_are_bit_identical_in_rayon_pools_of_1_2_and_4_threads() {
    let (model, tokenizer) = load();
    let reference = compute(&model, &tokenizer);
    assert_bit_identical(
        &compute(&model, &tokenizer),
        &reference,
        "a second run in the global pool",
    );
    for threads in [1, 2, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for run in 0..2 {
            let got = pool.install(|| compute(&model, &tokenizer));
            assert_bit_identical(&got, &reference, &format!("{threads} threads, run {run}"));
        }
    }
    println!("fingerprint: {:016x}", fingerprint(&reference));
}

/// Set by the parent test in the child processes it starts.
const CHILD: &str = "GPT2_DETERMINISM_CHILD";

/// In a child process: print the fingerprint the parent compares. Otherwise
/// (in a normal test run) nothing.
#[test]
fn child_process_prints_its_fingerprint() {
    if std::env::var_os(CHILD).is_some() {
        let (model, tokenizer) = load();
        println!(
            "child fingerprint: {:016x}",
            fingerprint(&compute(&model, &tokenizer))
        );
    }
}

#[test]
fn logits_are_bit_identical_whatever_the_environment_says() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let (model, tokenizer) = load();
    let expected = format!("{:016x}", fingerprint(&compute(&model, &tokenizer)));
    let exe = std::env::current_exe().unwrap();
    for rayon in ["1", "2", "4"] {
        let output = Command::new(&exe)
            .args([
                "child_process_prints_its_fingerprint",
                "--exact",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .env("RAYON_NUM_THREADS", rayon)
            .output()
            .expect("run the test binary again");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "child failed:\n{stdout}");
        let got = stdout
            .lines()
            .find_map(|l| l.strip_prefix("child fingerprint: "))
            .unwrap_or_else(|| panic!("no fingerprint in:\n{stdout}"));
        assert_eq!(
            got, expected,
            "RAYON_NUM_THREADS={rayon} changed the logits"
        );
    }
}
