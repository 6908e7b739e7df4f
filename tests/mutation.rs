//! Mutation property test: thousands of deterministic, seeded damages to the
//! golden files (byte flips, interesting bytes, numbers swapped inside JSON,
//! truncations, insertions, deletions), each fed to the loader that reads
//! that kind of file. Every one must come back as `Ok` or `Err`; none may
//! panic. When a damaged file still loads, the model it gives must run.
//!
//! This is the stable-Rust, in-CI companion of the cargo-fuzz targets in
//! `fuzz/` (see `scripts/fuzz.sh`): the fuzzers search far more widely, this
//! test makes sure that what they once found stays fixed. The exhaustive
//! single-byte damages of a legacy `.bin` and of a pickle live in
//! `tests/pytorch_bin.rs`; this file covers safetensors, the zip `.bin`
//! files, `config.json` and the directory loader.
//!
//! `MUTATION_CASES=N` scales the number of cases (default 1: the counts
//! below; `scripts/valgrind.sh` runs a tenth).

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use gpt2_ndarray::checkpoint::pytorch::read_pytorch_bin_bytes;
use gpt2_ndarray::checkpoint::safetensors::read_safetensors_bytes;
use gpt2_ndarray::model::WeightsFormat;
use gpt2_ndarray::{Config, Gpt2};

fn golden(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(path)
}

fn read(path: &str) -> Vec<u8> {
    fs::read(golden(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// How many cases of each kind to run: `base × MUTATION_CASES` (a float).
fn cases(base: usize) -> usize {
    let scale: f64 = std::env::var("MUTATION_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((base as f64 * scale).ceil() as usize).max(1)
}

/// SplitMix64: the same seed gives the same cases on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Bytes that mean something to one of the parsers: pickle opcodes (MARK,
/// STOP, BINGET, TUPLE, REDUCE, BINPERSID, PROTO, LONG1), zip and JSON
/// punctuation, digits, and the extremes.
const INTERESTING_BYTES: &[u8] = b"\x00\x01\x7f\x80\xff(.htRQ\x8a\x8d\x95PK{}[]\":,-019e";

/// Numbers to put where a JSON number was: zero, one, off by one, sizes of
/// the golden models, powers of two at integer-width edges, negatives,
/// fractions, exponents.
const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "7",
    "47",
    "48",
    "49",
    "128",
    "50257",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "-9223372036854775808",
    "1.5",
    "1e300",
    "1e-300",
    "null",
    "\"7\"",
    "[]",
];

/// One damage of `bytes`, confined to `region` (a byte range), described in
/// words so a failure can be reproduced by hand.
fn mutate(rng: &mut Rng, bytes: &[u8], region: std::ops::Range<usize>) -> (Vec<u8>, String) {
    let mut out = bytes.to_vec();
    let region = region.start..region.end.min(bytes.len()).max(region.start + 1);
    let at = (region.start + rng.below(region.len())).min(bytes.len().saturating_sub(1));
    let what = match rng.below(8) {
        0 => {
            let bit = rng.below(8);
            out[at] ^= 1 << bit;
            format!("flip bit {bit} of byte {at}")
        }
        1 => {
            let byte = *rng.pick(INTERESTING_BYTES);
            out[at] = byte;
            format!("set byte {at} to {byte:#04x}")
        }
        2 => {
            out.truncate(at);
            format!("truncate to {at} bytes")
        }
        3 => {
            let n = 1 + rng.below(16);
            let insert: Vec<u8> = (0..n).map(|_| *rng.pick(INTERESTING_BYTES)).collect();
            out.splice(at..at, insert.iter().copied());
            format!("insert {insert:?} at {at}")
        }
        4 => {
            let n = (1 + rng.below(64)).min(out.len() - at);
            out.drain(at..at + n);
            format!("delete {n} bytes at {at}")
        }
        5 => {
            // Duplicate a chunk: repeated pickle opcodes, repeated JSON entries.
            let n = (1 + rng.below(64)).min(out.len() - at);
            let chunk = out[at..at + n].to_vec();
            out.splice(at..at, chunk);
            format!("duplicate {n} bytes at {at}")
        }
        6 => replace_number(rng, &mut out, region).unwrap_or_else(|| {
            out[at] = !out[at];
            format!("invert byte {at}")
        }),
        _ => {
            // Several flips at once.
            let n = 2 + rng.below(6);
            for _ in 0..n {
                let i = region.start + rng.below(region.len());
                if i < out.len() {
                    out[i] = rng.next() as u8;
                }
            }
            format!("{n} random bytes in {region:?}")
        }
    };
    (out, what)
}

/// Replace one run of ASCII digits in `region` (a size, an offset, a shape)
/// with an interesting number.
fn replace_number(
    rng: &mut Rng,
    bytes: &mut Vec<u8>,
    region: std::ops::Range<usize>,
) -> Option<String> {
    let end = region.end.min(bytes.len());
    let runs: Vec<(usize, usize)> = {
        let mut runs = Vec::new();
        let mut i = region.start;
        while i < end {
            if bytes[i].is_ascii_digit() {
                let start = i;
                while i < end && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                runs.push((start, i));
            }
            i += 1;
        }
        runs
    };
    if runs.is_empty() {
        return None;
    }
    let &(start, stop) = rng.pick(&runs);
    let number = *rng.pick(INTERESTING_NUMBERS);
    let old = String::from_utf8_lossy(&bytes[start..stop]).into_owned();
    bytes.splice(start..stop, number.bytes());
    Some(format!("replace the number {old} at {start} with {number}"))
}

/// Runs `n` damages of `bytes` through `load`, returning the descriptions of
/// the ones that panicked.
fn run(
    name: &str,
    seed: u64,
    n: usize,
    bytes: &[u8],
    region: std::ops::Range<usize>,
    load: &dyn Fn(&[u8]),
) -> Vec<String> {
    let mut rng = Rng(seed);
    let mut panics = Vec::new();
    for case in 0..n {
        let (damaged, what) = mutate(&mut rng, bytes, region.clone());
        if catch_unwind(AssertUnwindSafe(|| load(&damaged))).is_err() {
            panics.push(format!("{name} case {case} (seed {seed}): {what}"));
        }
    }
    panics
}

fn assert_no_panics(panics: Vec<String>) {
    assert!(
        panics.is_empty(),
        "{} damaged inputs panicked:\n{}",
        panics.len(),
        panics.join("\n")
    );
}

/// When damaged weights still load as a model, it must run.
fn run_model(model: &Gpt2) {
    let vocab = model.config.vocab_size as u32;
    let ids: Vec<u32> = (0..model.config.n_positions.min(3) as u32)
        .map(|i| i % vocab)
        .collect();
    let _ = model.forward(&ids);
}

fn tiny_config() -> Config {
    Config::from_file(&golden("bad/tiny/config.json")).unwrap()
}

#[test]
fn damaged_safetensors_headers_never_panic() {
    // The golden GPT-2's header region (its 40 tensors' names, shapes and
    // offsets); the 10 MB of data after it are not converted for wte and wpe
    // (`keep`), to keep each case fast.
    let file = read("model/model.safetensors");
    let header_end = 8 + u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let keep = |name: &str| !name.starts_with("wte") && !name.starts_with("wpe");
    assert!(read_safetensors_bytes(&file, &keep).is_ok());
    let panics = run(
        "model.safetensors header",
        1,
        cases(2000),
        &file,
        0..header_end,
        &|bytes| {
            let _ = read_safetensors_bytes(bytes, &keep);
        },
    );
    assert_no_panics(panics);
}

#[test]
fn truncated_safetensors_are_always_errors() {
    let file = read("bad/tiny/model.safetensors");
    let mut rng = Rng(2);
    for _ in 0..cases(300) {
        let len = rng.below(file.len());
        let result = catch_unwind(|| read_safetensors_bytes(&file[..len], &|_| true));
        assert!(
            matches!(result, Ok(Err(_))),
            "a prefix of {len} bytes did not give an error"
        );
    }
}

#[test]
fn damaged_tiny_models_never_panic_and_still_run_when_they_load() {
    let config = tiny_config();
    let st = read("bad/tiny/model.safetensors");
    let bin = read("bad/tiny/pytorch_model.bin");
    let load = |tensors: anyhow::Result<_>| {
        if let Ok(tensors) = tensors {
            if let Ok(model) = Gpt2::from_tensors(config.clone(), tensors) {
                run_model(&model);
            }
        }
    };
    let mut panics = run(
        "tiny model.safetensors",
        3,
        cases(1500),
        &st,
        0..st.len(),
        &|bytes| load(read_safetensors_bytes(bytes, &|_| true)),
    );
    panics.extend(run(
        "tiny pytorch_model.bin",
        4,
        cases(1500),
        &bin,
        0..bin.len(),
        &|bytes| load(read_pytorch_bin_bytes(bytes, &|_| true)),
    ));
    assert_no_panics(panics);
}

#[test]
fn damaged_bin_checkpoints_never_panic() {
    let mut panics = Vec::new();
    for (seed, file) in [
        "tiny_zip.bin",
        "tiny_proto4.bin",
        "hostile_eval.bin",
        "short_storage.bin",
        "huge_tensor.bin",
        "unsupported_dtype.bin",
    ]
    .into_iter()
    .enumerate()
    {
        let bytes = read(&format!("checkpoints/{file}"));
        panics.extend(run(
            file,
            10 + seed as u64,
            cases(300),
            &bytes,
            0..bytes.len(),
            &|bytes| {
                let _ = read_pytorch_bin_bytes(bytes, &|_| true);
            },
        ));
    }
    assert_no_panics(panics);
}

#[test]
fn damaged_config_files_never_panic() {
    let mut panics = Vec::new();
    for (seed, file) in ["model/config.json", "bad/tiny/config.json"]
        .into_iter()
        .enumerate()
    {
        let bytes = read(file);
        panics.extend(run(
            file,
            20 + seed as u64,
            cases(1500),
            &bytes,
            0..bytes.len(),
            &|bytes| {
                if let Ok(config) = Config::from_json(&String::from_utf8_lossy(bytes)) {
                    config.validate().expect("from_json returns valid configs");
                    let _ = (config.head_dim(), config.attention_scale(0));
                    let _ = config.num_parameters();
                }
            },
        ));
    }
    assert_no_panics(panics);
}

#[test]
fn damaged_model_directories_never_panic() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("mutation_{}", std::process::id()))
        .join("model");
    fs::create_dir_all(&dir).unwrap();
    let files = ["config.json", "model.safetensors", "pytorch_model.bin"];
    let originals: Vec<Vec<u8>> = files
        .iter()
        .map(|f| read(&format!("bad/tiny/{f}")))
        .collect();
    let mut panics = Vec::new();
    for (i, file) in files.iter().enumerate() {
        for (f, bytes) in files.iter().zip(&originals) {
            fs::write(dir.join(f), bytes).unwrap();
        }
        let original = &originals[i];
        panics.extend(run(
            &format!("directory with a damaged {file}"),
            30 + i as u64,
            cases(150),
            original,
            0..original.len(),
            &|bytes| {
                fs::write(dir.join(file), bytes).unwrap();
                for format in [WeightsFormat::Safetensors, WeightsFormat::PytorchBin] {
                    if let Ok(model) = Gpt2::from_dir_with(&dir, format) {
                        run_model(&model);
                    }
                }
            },
        ));
    }
    let _ = fs::remove_dir_all(dir.parent().unwrap());
    assert_no_panics(panics);
}
