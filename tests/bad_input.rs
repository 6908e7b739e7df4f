//! Bad input never panics or misleads: for every kind of bad file or argument
//! a user can hand this crate, an error comes back whose message names the
//! problem and the file or tensor.
//!
//! The tiny model directories in `golden/bad/` (vocab 11, 7 positions,
//! `n_embd` 8, 2 heads, 2 blocks) are written by `python_ref/make_bad_inputs.py`;
//! the hostile and broken `.bin` files by `python_ref/make_checkpoints.py`.
//! Damaged safetensors files are crafted here, byte by byte, in
//! `CARGO_TARGET_TMPDIR`.

use std::fs;
use std::path::{Path, PathBuf};

use gpt2_ndarray::checkpoint::pytorch::{read_pytorch_bin, read_pytorch_bin_bytes};
use gpt2_ndarray::checkpoint::safetensors::read_safetensors;
use gpt2_ndarray::checkpoint::unpickler as pickle;
use gpt2_ndarray::generate::{generate, generate_batch, GenerateOptions, Generation};
use gpt2_ndarray::model::WeightsFormat;
use gpt2_ndarray::{Gpt2, KvCache, Logits, Tokenizer, Trace};
use ndarray::Array2;

// ---- helpers ----

fn golden(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(path)
}

/// An empty scratch directory of this test binary, unique per name.
fn scratch(name: &str) -> PathBuf {
    // Tests run in parallel threads of one process: every call gets its own
    // folder, so no test removes the files of another.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bad_input_{}", std::process::id()))
        .join(format!("{name}_{call}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A model directory holding exactly `files` (name, contents).
fn model_dir(name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let dir = scratch(name);
    for (file, bytes) in files {
        fs::write(dir.join(file), bytes).unwrap();
    }
    dir
}

fn read(path: &str) -> Vec<u8> {
    fs::read(golden(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn tiny_config() -> Vec<u8> {
    read("bad/tiny/config.json")
}

/// The full error chain of something that must fail (printed when the
/// environment variable `BAD_INPUT_SHOW` is set, to review the messages).
fn error_of<T>(result: anyhow::Result<T>, what: &str) -> String {
    match result {
        Ok(_) => panic!("{what}: succeeded, expected an error"),
        Err(e) => {
            let message = format!("{e:#}");
            if std::env::var_os("BAD_INPUT_SHOW").is_some() {
                eprintln!("--- {what}:\n{message}");
            }
            message
        }
    }
}

fn assert_mentions(message: &str, words: &[&str]) {
    for word in words {
        assert!(
            message.contains(word),
            "{word:?} missing from the error:\n{message}"
        );
    }
}

/// `Gpt2::from_dir` must fail, naming `file` of `dir` and every word.
fn assert_load_fails(dir: &Path, file: &str, words: &[&str]) -> String {
    let message = error_of(Gpt2::from_dir(dir), &dir.display().to_string());
    let path = dir.join(file).display().to_string();
    assert_mentions(&message, &[&path]);
    assert_mentions(&message, words);
    message
}

/// A safetensors file: the 8-byte header length, the header, the data.
fn safetensors_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

fn tiny_model() -> Gpt2 {
    Gpt2::from_dir(golden("bad/tiny")).expect("the tiny model loads")
}

// ---- directories and files ----

#[test]
fn a_missing_directory_is_named() {
    let dir = golden("no/such/model");
    let message = error_of(Gpt2::from_dir(&dir), "missing dir");
    assert_mentions(&message, &[&dir.display().to_string(), "does not exist"]);
    let message = error_of(
        Gpt2::from_dir_with(&dir, WeightsFormat::PytorchBin),
        "missing dir",
    );
    assert_mentions(&message, &[&dir.display().to_string(), "does not exist"]);
}

#[test]
fn a_file_given_as_the_model_directory_is_refused() {
    let file = golden("bad/tiny/config.json");
    let message = error_of(Gpt2::from_dir(&file), "a file as directory");
    assert_mentions(&message, &[&file.display().to_string(), "not a directory"]);
}

#[test]
fn a_directory_without_weights_says_which_files_it_looked_for() {
    let dir = model_dir("no_weights", &[("config.json", &tiny_config())]);
    let message = error_of(Gpt2::from_dir(&dir), "no weights");
    assert_mentions(
        &message,
        &[
            &dir.display().to_string(),
            "neither model.safetensors nor pytorch_model.bin",
        ],
    );
}

#[test]
fn a_missing_weights_file_of_the_requested_format_is_named() {
    let weights = read("bad/tiny/model.safetensors");
    let dir = model_dir(
        "only_safetensors",
        &[
            ("config.json", &tiny_config()),
            ("model.safetensors", &weights),
        ],
    );
    let message = error_of(
        Gpt2::from_dir_with(&dir, WeightsFormat::PytorchBin),
        "no .bin",
    );
    assert_mentions(
        &message,
        &[&dir.join("pytorch_model.bin").display().to_string()],
    );
}

#[test]
fn a_missing_config_json_is_named() {
    let weights = read("bad/tiny/model.safetensors");
    let dir = model_dir("no_config", &[("model.safetensors", &weights)]);
    assert_load_fails(&dir, "config.json", &["cannot read config"]);
}

#[test]
fn empty_weights_files_are_errors() {
    for file in ["model.safetensors", "pytorch_model.bin"] {
        let dir = model_dir(
            &format!("empty_{file}"),
            &[("config.json", &tiny_config()), (file, b"")],
        );
        assert_load_fails(&dir, file, &["empty"]);
    }
}

// ---- config.json on disk ----

#[test]
fn bad_config_files_name_the_file_and_the_problem() {
    let good = String::from_utf8(tiny_config()).unwrap();
    let cases: &[(&str, String, &[&str])] = &[
        ("empty", String::new(), &["not valid JSON"]),
        ("not_json", "{\"n_embd\": 8,".into(), &["not valid JSON"]),
        ("not_an_object", "[1, 2, 3]".into(), &["not a JSON object"]),
        (
            "lacks_n_head",
            good.replace("\"n_head\": 2,", ""),
            &["lacks the field \"n_head\""],
        ),
        (
            "lacks_n_positions",
            good.replace("\"n_positions\": 7,", ""),
            &["lacks the field \"n_positions\""],
        ),
        (
            "indivisible",
            good.replace("\"n_head\": 2", "\"n_head\": 3"),
            &["n_embd (8) is not divisible by n_head (3)"],
        ),
        (
            "zero_layers",
            good.replace("\"n_layer\": 2", "\"n_layer\": 0"),
            &["n_layer is 0"],
        ),
        (
            "negative",
            good.replace("\"n_embd\": 8", "\"n_embd\": -8"),
            &["n_embd is -8, it must be positive"],
        ),
        (
            "absurd",
            good.replace("\"vocab_size\": 11", "\"vocab_size\": 100000000000"),
            &["vocab_size is 100000000000, more than the sane limit"],
        ),
        (
            "beyond_u64",
            good.replace("\"n_layer\": 2", "\"n_layer\": 100000000000000000000000"),
            &["n_layer", "it must be an integer"],
        ),
        (
            "string_size",
            good.replace("\"n_head\": 2", "\"n_head\": \"2\""),
            &["n_head is \"2\", it must be an integer"],
        ),
        (
            "fractional_size",
            good.replace("\"n_layer\": 2", "\"n_layer\": 2.5"),
            &["n_layer is 2.5, it must be an integer"],
        ),
        (
            "bool_as_string",
            good.replace("\"n_inner\": null", "\"tie_word_embeddings\": \"yes\""),
            &["tie_word_embeddings is \"yes\", it must be true or false"],
        ),
        (
            "zero_epsilon",
            good.replace("1e-05", "0"),
            &["layer_norm_epsilon is 0"],
        ),
        (
            "not_gpt2",
            good.replace("\"gpt2\"", "\"llama\""),
            &["model_type is \"llama\""],
        ),
    ];
    let weights = read("bad/tiny/model.safetensors");
    for (name, config, words) in cases {
        let dir = model_dir(
            &format!("config_{name}"),
            &[
                ("config.json", config.as_bytes()),
                ("model.safetensors", &weights),
            ],
        );
        let message = assert_load_fails(&dir, "config.json", words);
        assert!(
            message.contains("invalid config"),
            "{name}: the error does not say the config is invalid: {message}"
        );
    }
}

// ---- model.safetensors ----

/// `read_safetensors` on `bytes` written to a file must fail, naming the file and `words`.
fn assert_safetensors_fails(name: &str, bytes: &[u8], words: &[&str]) {
    let path = scratch("safetensors").join(format!("{name}.safetensors"));
    fs::write(&path, bytes).unwrap();
    let message = error_of(read_safetensors(&path, &|_| true), name);
    assert_mentions(&message, &[&path.display().to_string()]);
    assert_mentions(&message, words);
}

#[test]
fn truncated_safetensors_files_say_where_they_end() {
    let file = read("bad/tiny/model.safetensors");
    assert_safetensors_fails("cut_5", &file[..5], &["5 bytes, fewer than the 8"]);
    assert_safetensors_fails(
        "cut_in_header",
        &file[..100],
        &["header length field says", "only 92 bytes follow"],
    );
    // Cut in the data: the last tensors' ranges now end past the data.
    let cut = &file[..file.len() - 100];
    assert_safetensors_fails(
        "cut_in_data",
        cut,
        &["past the", "bytes of data the file holds", "truncated"],
    );
    // And from a model directory: the error names model.safetensors.
    let dir = model_dir(
        "truncated_safetensors",
        &[("config.json", &tiny_config()), ("model.safetensors", cut)],
    );
    assert_load_fails(&dir, "model.safetensors", &["past the"]);
}

#[test]
fn a_header_length_past_the_end_is_refused() {
    let mut file = read("bad/tiny/model.safetensors");
    for claim in [1_000_000u64, u64::MAX] {
        file[..8].copy_from_slice(&claim.to_le_bytes());
        assert_safetensors_fails(
            &format!("header_len_{claim}"),
            &file,
            &[&format!("header length field says {claim} bytes")],
        );
    }
}

#[test]
fn overlapping_and_out_of_range_offsets_name_the_tensors() {
    let data = [0u8; 16];
    assert_safetensors_fails(
        "overlap",
        &safetensors_bytes(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            &data[..12],
        ),
        &[r#"tensors "a" (bytes 0..8) and "b" (bytes 4..12) overlap"#],
    );
    assert_safetensors_fails(
        "out_of_range",
        &safetensors_bytes(
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            &data[..8],
        ),
        &[r#"tensor "a""#, "[0, 16]", "past the 8 bytes of data"],
    );
    assert_safetensors_fails(
        "backwards",
        &safetensors_bytes(
            r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#,
            &data[..8],
        ),
        &[r#"tensor "a""#, "end before they start"],
    );
    assert_safetensors_fails(
        "gap",
        &safetensors_bytes(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
            &data[..12],
        ),
        &[r#"bytes 4..8 of the data, before tensor "b", belong to no tensor"#],
    );
    assert_safetensors_fails(
        "trailing_data",
        &safetensors_bytes(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            &data[..12],
        ),
        &["the tensors cover 4 bytes of data, but the file holds 12"],
    );
}

#[test]
fn a_dtype_or_shape_that_disagrees_with_the_bytes_names_the_tensor() {
    let data = [0u8; 16];
    assert_safetensors_fails(
        "shape_vs_bytes",
        &safetensors_bytes(
            r#"{"wte.weight":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            &data[..8],
        ),
        &[
            r#"tensor "wte.weight": dtype F32 × shape [3] is 12 bytes, but its data_offsets [0, 8] hold 8"#,
        ],
    );
    assert_safetensors_fails(
        "dtype_vs_bytes",
        &safetensors_bytes(
            r#"{"wte.weight":{"dtype":"F16","shape":[4],"data_offsets":[0,16]}}"#,
            &data,
        ),
        &[r#"tensor "wte.weight": dtype F16 × shape [4] is 8 bytes"#],
    );
    assert_safetensors_fails(
        "overflowing_shape",
        &safetensors_bytes(
            r#"{"wte.weight":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,8]}}"#,
            &data[..8],
        ),
        &[r#"tensor "wte.weight""#, "overflows"],
    );
    assert_safetensors_fails(
        "unknown_dtype",
        &safetensors_bytes(
            r#"{"wte.weight":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}"#,
            &data,
        ),
        &["not a valid safetensors file", "F128"],
    );
    assert_safetensors_fails(
        "int_weights",
        &safetensors_bytes(
            r#"{"wte.weight":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#,
            &data,
        ),
        &[r#"tensor "wte.weight""#, "unsupported dtype I64"],
    );
    assert_safetensors_fails(
        "not_json",
        &safetensors_bytes("{\"wte.weight\": [", &data),
        &["not a valid safetensors file", "JSON"],
    );
}

#[test]
fn a_tensor_claiming_100_gb_is_refused_before_anything_is_allocated() {
    // safetensors: a [25000, 1000000] f32 tensor backed by 64 bytes.
    assert_safetensors_fails(
        "huge",
        &safetensors_bytes(
            r#"{"wte.weight":{"dtype":"F32","shape":[25000,1000000],"data_offsets":[0,100000000000]}}"#,
            &[0u8; 64],
        ),
        &[
            r#"tensor "wte.weight""#,
            "100000000000 bytes",
            "past the 64 bytes of data",
        ],
    );
    // PyTorch zip: the same shape over a 64-byte storage.
    let message = error_of(
        read_pytorch_bin(&golden("checkpoints/huge_tensor.bin"), &|_| true),
        "huge zip",
    );
    assert_mentions(
        &message,
        &["huge_tensor.bin", "100000000000 bytes", "has 64"],
    );
    // PyTorch legacy: a storage whose element count says 25 billion floats.
    let mut legacy = read("checkpoints/tiny_legacy.bin");
    let first_count = legacy_storage_start(&legacy);
    legacy[first_count..first_count + 8].copy_from_slice(&25_000_000_000u64.to_le_bytes());
    let message = error_of(read_pytorch_bin_bytes(&legacy, &|_| true), "huge legacy");
    assert_mentions(&message, &["truncated", "needs 100000000000 bytes"]);
    // A zip entry whose size field claims 4 GB.
    let zip = zip_with_claimed_size(
        &read("checkpoints/tiny_zip.bin"),
        "tiny_zip/data/0",
        0xffff_fff0,
    );
    let message = error_of(read_pytorch_bin_bytes(&zip, &|_| true), "huge entry");
    assert_mentions(&message, &["tiny_zip/data/0"]);
}

/// Offset of the first storage's 8-byte element count in a legacy file: just
/// after its five pickles.
fn legacy_storage_start(file: &[u8]) -> usize {
    let mut rest = file;
    for _ in 0..5 {
        pickle::load(&mut rest).expect("a legacy pickle");
    }
    file.len() - rest.len()
}

/// `zip` with the uncompressed and compressed sizes of `entry` in its central
/// directory (and local header) set to `size`.
fn zip_with_claimed_size(zip: &[u8], entry: &str, size: u32) -> Vec<u8> {
    let mut out = zip.to_vec();
    let name = entry.as_bytes();
    let mut patched = 0;
    for i in 0..zip.len().saturating_sub(46) {
        // Central directory header: sizes at 20 and 24, name length at 28, name at 46.
        if zip[i..].starts_with(b"PK\x01\x02") && zip[i + 46..].starts_with(name) {
            out[i + 20..i + 24].copy_from_slice(&size.to_le_bytes());
            out[i + 24..i + 28].copy_from_slice(&size.to_le_bytes());
            patched += 1;
        }
        // Local header: sizes at 18 and 22, name at 30.
        if zip[i..].starts_with(b"PK\x03\x04") && zip[i + 30..].starts_with(name) {
            out[i + 18..i + 22].copy_from_slice(&size.to_le_bytes());
            out[i + 22..i + 26].copy_from_slice(&size.to_le_bytes());
            patched += 1;
        }
    }
    assert_eq!(patched, 2, "{entry} not found in the zip");
    out
}

// ---- pytorch_model.bin ----

#[test]
fn a_model_directory_with_a_hostile_bin_fails_naming_the_file_and_runs_nothing() {
    let marker = std::env::temp_dir().join("gpt2_ndarray_pwned_marker");
    let _ = fs::remove_file(&marker);
    for (file, global) in [
        ("hostile_os_system.bin", "posix.system"),
        ("hostile_eval.bin", "builtins.eval"),
        ("hostile_popen.bin", "subprocess.Popen"),
    ] {
        let dir = model_dir(
            file,
            &[
                ("config.json", &tiny_config()),
                ("pytorch_model.bin", &read(&format!("checkpoints/{file}"))),
            ],
        );
        assert_load_fails(&dir, "pytorch_model.bin", &[global, "not allowed"]);
        assert!(!marker.exists(), "{file} created {}", marker.display());
    }
}

#[test]
fn broken_bin_files_in_a_model_directory_name_the_file() {
    for (file, words) in [
        ("not_a_checkpoint.bin", &["neither", "first bytes"][..]),
        ("no_data_pkl.bin", &["data.pkl"]),
        ("short_storage.bin", &["shorter", "\"weight\""]),
        ("truncated_pkl.bin", &["truncated"]),
        ("truncated_legacy.bin", &["truncated"]),
        ("huge_tensor.bin", &["100000000000 bytes"]),
        ("unsupported_dtype.bin", &["\"ids\"", "torch.LongStorage"]),
    ] {
        let dir = model_dir(
            file,
            &[
                ("config.json", &tiny_config()),
                ("pytorch_model.bin", &read(&format!("checkpoints/{file}"))),
            ],
        );
        assert_load_fails(&dir, "pytorch_model.bin", words);
    }
}

/// A protocol-2 pickle: `PROTO 2`, `body`, `STOP`.
fn pickle_of(body: &[u8]) -> Vec<u8> {
    [&[0x80, 2][..], body, b"."].concat()
}

#[test]
fn pickle_tricks_beyond_global_and_reduce_are_refused() {
    let cases: &[(&str, Vec<u8>, &str)] = &[
        // INST: GLOBAL and call in one opcode (protocol 0).
        (
            "INST",
            pickle_of(b"(X\x01\x00\x00\x00xios\nsystem\n"),
            "unsupported pickle opcode 0x69",
        ),
        // OBJ: call the class below the MARK.
        (
            "OBJ",
            pickle_of(b"(cos\nsystem\nX\x01\x00\x00\x00xo"),
            "\"os.system\"",
        ),
        // NEWOBJ on an allowed class: cls.__new__(cls, *args) is a call too.
        (
            "NEWOBJ",
            pickle_of(b"ccollections\nOrderedDict\n)\x81"),
            "unsupported pickle opcode 0x81",
        ),
        // EXT1: a global looked up in copyreg's extension registry.
        (
            "EXT1",
            pickle_of(b"\x82\x01)R"),
            "unsupported pickle opcode 0x82",
        ),
        // STACK_GLOBAL reaching builtins.getattr, the usual sandbox escape.
        (
            "STACK_GLOBAL",
            pickle_of(b"\x8c\x08builtins\x8c\x07getattr\x93"),
            "\"builtins.getattr\"",
        ),
        // GLOBAL of an allowed module with a hostile attribute.
        ("torch_attr", pickle_of(b"ctorch\nload\n"), "\"torch.load\""),
        // REDUCE of an allowed callable with arguments it is never given.
        (
            "OrderedDict_args",
            pickle_of(b"ccollections\nOrderedDict\n]\x85R"),
            "cannot apply",
        ),
        // Calling a storage class directly.
        (
            "storage_call",
            pickle_of(b"ctorch\nFloatStorage\n)R"),
            "cannot apply",
        ),
        // A persistent id that is not a storage.
        (
            "persistent_id",
            pickle_of(b"X\x04\x00\x00\x00evilQ"),
            "persistent id",
        ),
        // REDUCE on a string.
        (
            "reduce_str",
            pickle_of(b"X\x01\x00\x00\x00x)R"),
            "not callable",
        ),
    ];
    for (name, bytes, word) in cases {
        let message = error_of(pickle::load(bytes.as_slice()), name);
        assert_mentions(&message, &[word]);
    }
}

#[test]
fn a_truncated_pickle_stream_says_truncated() {
    let file = read("checkpoints/tiny_legacy.bin");
    let end = legacy_storage_start(&file);
    for cut in [1, 2, 10, end / 2, end - 1] {
        let message = error_of(read_pytorch_bin_bytes(&file[..cut], &|_| true), "cut");
        assert_mentions(&message, &["truncated"]);
    }
}

// ---- weights that are NaN or infinite ----

#[test]
fn weights_with_nan_or_inf_are_refused_in_both_formats() {
    for (dir, tensor, value) in [
        ("bad/nan", "h.1.mlp.c_fc.weight", "NaN"),
        ("bad/inf", "wpe.weight", "-inf"),
    ] {
        let dir = golden(dir);
        for format in [WeightsFormat::Safetensors, WeightsFormat::PytorchBin] {
            let message = error_of(Gpt2::from_dir_with(&dir, format), &format!("{format:?}"));
            assert_mentions(
                &message,
                &[
                    &dir.join(format.file_name()).display().to_string(),
                    &format!("tensor {tensor} contains {value} (weights must be finite)"),
                ],
            );
        }
    }
}

// ---- tensors that do not fit config.json ----

#[test]
fn a_checkpoint_that_does_not_fit_the_config_lists_every_problem() {
    let dir = golden("bad/mismatch");
    for format in [WeightsFormat::Safetensors, WeightsFormat::PytorchBin] {
        let message = error_of(Gpt2::from_dir_with(&dir, format), &format!("{format:?}"));
        assert_mentions(
            &message,
            &[
                &dir.join(format.file_name()).display().to_string(),
                "does not fit config.json (3 problems)",
                "tensor h.0.attn.c_attn.weight has shape [24, 8], expected [8, 24]",
                "missing tensor h.1.ln_2.bias (expected shape [8])",
                "unexpected tensor h.0.attn.c_attn.lora_A",
            ],
        );
    }
}

#[test]
fn the_tiny_model_loads_identically_from_both_formats() {
    let dir = golden("bad/tiny");
    let st = Gpt2::from_dir_with(&dir, WeightsFormat::Safetensors).unwrap();
    let bin = Gpt2::from_dir_with(&dir, WeightsFormat::PytorchBin).unwrap();
    assert_eq!(st.wte, bin.wte);
    assert_eq!(st.h[1].mlp.c_proj.weight, bin.h[1].mlp.c_proj.weight);
    assert_eq!(
        st.forward(&[1, 2, 3]).unwrap(),
        bin.forward(&[1, 2, 3]).unwrap()
    );
}

// ---- the forward pass ----

#[test]
fn forward_refuses_ids_out_of_range_empty_prompts_and_overlong_prompts() {
    let model = tiny_model();
    let n = model.config.n_positions;
    let cases: [(&[u32], &[&str]); 4] = [
        (
            &[1, 2, 11],
            &["token id 11 at position 2 is out of range", "11 tokens"],
        ),
        (&[u32::MAX], &["token id 4294967295 at position 0"]),
        (&[], &["empty"]),
        (&[1; 8], &["8 positions", "n_positions = 7"]),
    ];
    for (ids, words) in cases {
        assert_mentions(&error_of(model.forward(ids), "forward"), words);
        assert_mentions(
            &error_of(model.next_token_logits(ids), "next_token_logits"),
            words,
        );
        let mut trace = Trace::off();
        assert_mentions(
            &error_of(model.forward_traced(ids, &mut trace), "traced"),
            words,
        );
    }
    assert!(
        model.forward(&vec![1; n]).is_ok(),
        "exactly n_positions fits"
    );
}

#[test]
fn forward_step_refuses_a_wrong_mask_a_foreign_cache_and_a_full_cache() {
    let model = tiny_model();
    let mut trace = Trace::off();
    let mut cache = KvCache::new(2);
    let message = error_of(
        model.forward_step(&[1, 2], Some(&[true]), &mut cache, Logits::All, &mut trace),
        "mask",
    );
    assert_mentions(&message, &["attention mask has 1 entries for 2 tokens"]);
    let mut foreign = KvCache::new(5);
    let message = error_of(
        model.forward_step(&[1], None, &mut foreign, Logits::All, &mut trace),
        "cache",
    );
    assert_mentions(&message, &["cache was made for 5 layers, the model has 2"]);
    model
        .forward_step(&[1; 6], None, &mut cache, Logits::Last, &mut trace)
        .unwrap();
    let message = error_of(
        model.forward_step(&[1, 2], None, &mut cache, Logits::Last, &mut trace),
        "full",
    );
    assert_mentions(&message, &["6 cached + 2 new = 8 positions"]);
    let (ids, mask) = (
        Array2::<u32>::zeros((2, 3)),
        Array2::from_elem((2, 4), true),
    );
    let message = error_of(model.forward_batch(&ids, &mask), "batch");
    assert_mentions(
        &message,
        &["ids are (2, 3) but the attention mask is (2, 4)"],
    );
    let mut ids = Array2::<u32>::zeros((2, 3));
    ids[[1, 2]] = 99;
    let message = error_of(
        model.forward_batch(&ids, &Array2::from_elem((2, 3), true)),
        "batch id",
    );
    assert_mentions(&message, &["sequence 1 of the batch", "token id 99"]);
}

// ---- generation ----

fn golden_model() -> (Gpt2, Tokenizer) {
    let dir = golden("model");
    (
        Gpt2::from_dir(&dir).unwrap(),
        Tokenizer::from_dir(&dir).unwrap(),
    )
}

#[test]
fn generation_options_out_of_range_are_refused_with_their_name() {
    let cases: Vec<(GenerateOptions, &str)> = vec![
        (
            GenerateOptions {
                max_new_tokens: 0,
                ..Default::default()
            },
            "max_new_tokens is 0",
        ),
        (
            GenerateOptions {
                top_k: Some(0),
                ..Default::default()
            },
            "top_k is 0",
        ),
        (
            GenerateOptions {
                temperature: 0.0,
                ..Default::default()
            },
            "temperature is 0",
        ),
        (
            GenerateOptions {
                temperature: -0.5,
                ..Default::default()
            },
            "temperature is -0.5",
        ),
        (
            GenerateOptions {
                temperature: f32::NAN,
                ..Default::default()
            },
            "temperature is NaN",
        ),
        (
            GenerateOptions {
                temperature: f32::INFINITY,
                ..Default::default()
            },
            "temperature is inf",
        ),
        (
            GenerateOptions {
                top_p: Some(0.0),
                ..Default::default()
            },
            "top_p is 0",
        ),
        (
            GenerateOptions {
                top_p: Some(-0.1),
                ..Default::default()
            },
            "top_p is -0.1",
        ),
        (
            GenerateOptions {
                top_p: Some(1.01),
                ..Default::default()
            },
            "top_p is 1.01",
        ),
        (
            GenerateOptions {
                top_p: Some(f32::NAN),
                ..Default::default()
            },
            "top_p is NaN",
        ),
        (
            GenerateOptions {
                repetition_penalty: Some(-1.0),
                ..Default::default()
            },
            "repetition_penalty is -1",
        ),
        (
            GenerateOptions {
                repetition_penalty: Some(f32::NAN),
                ..Default::default()
            },
            "repetition_penalty is NaN",
        ),
        (
            GenerateOptions {
                stop_strings: vec![String::new()],
                ..Default::default()
            },
            "stop string is empty",
        ),
        (
            GenerateOptions {
                kv_cache: gpt2_ndarray::Dtype::F64,
                ..Default::default()
            },
            "kv_cache is f64",
        ),
    ];
    for (options, words) in &cases {
        assert_mentions(&error_of(options.validate(), words), &[words]);
    }
    // The same through every entry point, sampling or not.
    let (model, tokenizer) = golden_model();
    let prompt = tokenizer.encode("Hello").unwrap();
    for (options, words) in cases {
        for do_sample in [false, true] {
            let options = GenerateOptions {
                do_sample,
                ..options.clone()
            };
            let result = generate(&model, &tokenizer, &prompt, &options);
            assert_mentions(&error_of(result, words), &[words]);
            let result =
                generate_batch(&model, &tokenizer, std::slice::from_ref(&prompt), &options);
            assert_mentions(&error_of(result, words), &[words]);
            let result = Generation::new(&model, &tokenizer, &prompt, options);
            assert_mentions(&error_of(result, words), &[words]);
        }
    }
}

#[test]
fn generation_refuses_empty_overlong_and_out_of_range_prompts() {
    let (model, tokenizer) = golden_model();
    let options = GenerateOptions::default();
    let n = model.config.n_positions;
    for (prompt, words) in [
        (vec![], &["empty"][..]),
        (vec![50257], &["token id 50257", "out of range"]),
        (vec![464; n + 1], &["n_positions"]),
    ] {
        let message = error_of(generate(&model, &tokenizer, &prompt, &options), "prompt");
        assert_mentions(&message, words);
    }
    let message = error_of(
        generate_batch(&model, &tokenizer, &[vec![464], vec![]], &options),
        "batch",
    );
    assert_mentions(&message, &["prompt 1 of the batch is empty"]);
    let message = error_of(
        Generation::padded(
            &model,
            &tokenizer,
            &[50256, 50256],
            Some(&[false, false]),
            options,
        ),
        "all padding",
    );
    assert_mentions(&message, &["all padding"]);
}

// ---- tokenizer files ----

#[test]
fn missing_or_broken_tokenizer_files_are_named() {
    let dir = scratch("no_tokenizer");
    let message = error_of(Tokenizer::from_dir(&dir), "no tokenizer");
    assert_mentions(
        &message,
        &[&dir.join("vocab.json").display().to_string(), "not found"],
    );

    let merges = read("model/merges.txt");
    let dir = model_dir(
        "broken_vocab",
        &[("vocab.json", b"{\"a\": "), ("merges.txt", &merges)],
    );
    let message = error_of(Tokenizer::from_dir(&dir), "broken vocab");
    assert_mentions(&message, &[&dir.join("vocab.json").display().to_string()]);

    let dir = model_dir("broken_tokenizer_json", &[("tokenizer.json", b"[1, 2")]);
    let message = error_of(Tokenizer::from_dir(&dir), "broken tokenizer.json");
    assert_mentions(
        &message,
        &[&dir.join("tokenizer.json").display().to_string()],
    );
}

// ---- a small file whose tensors all view one storage ----

/// `torch._utils._rebuild_tensor_v2` of float storage "0" (`numel` elements)
/// with the given offset, size and stride, as pickle opcodes.
fn pickled_tensor(numel: u32, offset: u32, size: &[u32], stride: &[u32]) -> Vec<u8> {
    let int = |n: u32| [&[b'J'][..], &n.to_le_bytes()].concat();
    let text = |s: &str| [&[b'X'][..], &(s.len() as u32).to_le_bytes(), s.as_bytes()].concat();
    let tuple = |items: &[u32]| {
        let body: Vec<u8> = items.iter().flat_map(|&n| int(n)).collect();
        [&b"("[..], &body, b"t"].concat()
    };
    [
        &b"ctorch._utils\n_rebuild_tensor_v2\n("[..],
        b"(",
        &text("storage"),
        b"ctorch\nFloatStorage\n",
        &text("0"),
        &text("cpu"),
        &int(numel),
        b"tQ",
        &int(offset),
        &tuple(size),
        &tuple(stride),
        b"\x89ccollections\nOrderedDict\n)R",
        b"tR",
    ]
    .concat()
}

/// A zip checkpoint whose state dict maps `n` keys to tensors of one storage
/// of `numel` floats: `tensor(i)` gives the pickle of the i-th, and `None`
/// repeats the first one through the memo (2 bytes each).
fn many_views_zip(n: usize, numel: u32, tensor: impl Fn(usize) -> Option<Vec<u8>>) -> Vec<u8> {
    use std::io::Write;
    let mut pkl = b"\x80\x02ccollections\nOrderedDict\n)R(".to_vec();
    for i in 0..n {
        let key = format!("t{i}");
        pkl.push(b'X');
        pkl.extend_from_slice(&(key.len() as u32).to_le_bytes());
        pkl.extend_from_slice(key.as_bytes());
        match tensor(i) {
            Some(bytes) => pkl.extend(bytes),
            None if i == 0 => unreachable!("the first tensor is given"),
            None => pkl.extend_from_slice(b"h\x00"),
        }
        if i == 0 {
            pkl.extend_from_slice(b"q\x00");
        }
    }
    pkl.extend_from_slice(b"u.");
    let storage: Vec<u8> = (0..numel).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in [("views/data.pkl", &pkl), ("views/data/0", &storage)] {
        zip.start_file(name, options).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

#[test]
fn tensors_viewing_one_storage_over_and_over_are_refused_before_allocation() {
    // 3000 keys, each the whole 64 KB storage: 196 MB of f32 from a 101 KB file.
    let numel = 16_384;
    let file = many_views_zip(3000, numel, |i| {
        (i == 0).then(|| pickled_tensor(numel, 0, &[numel], &[1]))
    });
    assert!(file.len() < 110_000, "{} bytes", file.len());
    let message = error_of(read_pytorch_bin_bytes(&file, &|_| true), "many views");
    assert_mentions(
        &message,
        &["view the same storage over and over", "times the"],
    );
    // 3000 legitimate strided views of 2 elements each: loaded, gathering
    // only the elements viewed (not the 64 KB the views span).
    let file = many_views_zip(3000, numel, |i| {
        Some(pickled_tensor(numel, (i % 300) as u32, &[2], &[16_000]))
    });
    let tensors = read_pytorch_bin_bytes(&file, &|_| true).unwrap();
    assert_eq!(tensors.len(), 3000);
    assert_eq!(tensors["t7"].as_slice(), &[7.0, 16_007.0][..]);
}

/// A batch row with no real token has nothing to attend to: an error, not
/// meaningless logits.
#[test]
fn an_all_padding_row_is_refused() {
    let model = gpt2_ndarray::Gpt2::from_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/model"),
    )
    .unwrap();
    let ids = ndarray::Array2::from_elem((2, 3), 50256u32);
    let mut mask = ndarray::Array2::from_elem((2, 3), true);
    mask.row_mut(1).fill(false);
    let err = format!("{:#}", model.forward_batch(&ids, &mask).unwrap_err());
    assert!(
        err.contains("sequence 1") && err.contains("all padding"),
        "{err}"
    );
}
