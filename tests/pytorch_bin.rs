//! The PyTorch `.bin` reader against the files in `golden/checkpoints/`
//! (written by `python_ref/make_checkpoints.py`): exact values for the zip,
//! protocol-4 zip and legacy formats, the keep filter, and a clear error —
//! never a panic, never executed code — for every hostile or broken file.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use gpt2_ndarray::checkpoint::pytorch::read_pytorch_bin;
use gpt2_ndarray::checkpoint::unpickler as pickle;
use gpt2_ndarray::checkpoint::{Dtype, Tensors};
use ndarray::{ArrayD, Dimension};
use ndarray_npy::read_npy;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden/checkpoints")
        .join(name)
}

fn keep_all(_: &str) -> bool {
    true
}

fn read_ok(name: &str, keep: &dyn Fn(&str) -> bool) -> Tensors {
    read_pytorch_bin(&golden(name), keep).unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

/// The full error chain of a load that must fail.
fn read_err(name: &str, keep: &dyn Fn(&str) -> bool) -> String {
    match read_pytorch_bin(&golden(name), keep) {
        Ok(tensors) => panic!("{name} loaded, keys {:?}", tensors.keys()),
        Err(e) => format!("{e:#}"),
    }
}

/// Every key of the tiny state dict and the dtype it is stored in.
const TINY: &[(&str, Dtype)] = &[
    ("f32.matrix", Dtype::F32),
    ("f32.vector", Dtype::F32),
    ("f16.matrix", Dtype::F16),
    ("bf16.matrix", Dtype::BF16),
    ("f64.vector", Dtype::F64),
    ("transposed", Dtype::F32),
    ("slice", Dtype::F32),
    ("strided", Dtype::F32),
    ("transformer.wte.weight", Dtype::F32),
    ("lm_head.weight", Dtype::F32),
    ("same_object.a", Dtype::F16),
    ("same_object.b", Dtype::F16),
    ("scalar", Dtype::F32),
    ("empty", Dtype::F32),
    ("h.0.attn.bias", Dtype::F32),
];

/// The element that differs most (index, got, expected), if any differs at all.
fn worst_mismatch(got: &ArrayD<f32>, want: &ArrayD<f32>) -> Option<(Vec<usize>, f32, f32)> {
    got.indexed_iter()
        .zip(want.iter())
        .filter(|((_, g), w)| g.to_bits() != w.to_bits())
        .map(|((i, g), w)| (i.slice().to_vec(), *g, *w))
        .max_by(|a, b| (a.1 - a.2).abs().total_cmp(&(b.1 - b.2).abs()))
}

/// Checks `tensors` against `tiny_expected/*.npy` for the keys in `TINY` that `keep` selects.
fn assert_tiny(file: &str, tensors: &Tensors, keep: &dyn Fn(&str) -> bool) {
    let kept: Vec<&str> = TINY.iter().map(|(k, _)| *k).filter(|k| keep(k)).collect();
    let keys: Vec<&str> = tensors.keys().map(String::as_str).collect();
    let mut expected_keys = kept.clone();
    expected_keys.sort_unstable();
    assert_eq!(keys, expected_keys, "{file}: keys");
    for (key, dtype) in TINY.iter().filter(|(k, _)| keep(k)) {
        let tensor = &tensors[*key];
        let want: ArrayD<f32> = read_npy(golden(&format!("tiny_expected/{key}.npy")))
            .unwrap_or_else(|e| panic!("tiny_expected/{key}.npy: {e}"));
        assert_eq!(tensor.dtype, *dtype, "{file}: dtype of {key}");
        assert_eq!(tensor.shape(), want.shape(), "{file}: shape of {key}");
        if let Some((index, got, want)) = worst_mismatch(&tensor.view().to_owned(), &want) {
            panic!("{file}: {key}{index:?} = {got}, expected {want}");
        }
    }
}

#[test]
fn zip_checkpoint_matches_torch() {
    assert_tiny(
        "tiny_zip.bin",
        &read_ok("tiny_zip.bin", &keep_all),
        &keep_all,
    );
}

#[test]
fn zip_checkpoint_with_pickle_protocol_4_matches_torch() {
    let tensors = read_ok("tiny_proto4.bin", &keep_all);
    assert_tiny("tiny_proto4.bin", &tensors, &keep_all);
}

#[test]
fn legacy_checkpoint_matches_torch() {
    let tensors = read_ok("tiny_legacy.bin", &keep_all);
    assert_tiny("tiny_legacy.bin", &tensors, &keep_all);
}

#[test]
fn keep_filter_skips_tensors_in_every_format() {
    let keep = |key: &str| !key.ends_with(".attn.bias") && key != "f16.matrix";
    for file in ["tiny_zip.bin", "tiny_proto4.bin", "tiny_legacy.bin"] {
        let tensors = read_ok(file, &keep);
        assert!(!tensors.contains_key("h.0.attn.bias"), "{file}");
        assert_tiny(file, &tensors, &keep);
    }
}

#[test]
fn tied_weights_are_equal() {
    let tensors = read_ok("tiny_zip.bin", &keep_all);
    let wte = tensors["transformer.wte.weight"].view();
    assert_eq!(wte, tensors["lm_head.weight"].view());
}

/// `(file, words its error must contain)`; the file name is checked too.
const BROKEN: &[(&str, &[&str])] = &[
    (
        "hostile_os_system.bin",
        &["\"posix.system\"", "not allowed"],
    ),
    ("hostile_eval.bin", &["\"builtins.eval\"", "not allowed"]),
    (
        "hostile_popen.bin",
        &["\"subprocess.Popen\"", "not allowed"],
    ),
    ("not_a_checkpoint.bin", &["neither", "first bytes"]),
    ("no_data_pkl.bin", &["data.pkl"]),
    (
        "short_storage.bin",
        &["shorter", "\"weight\"", "48 bytes", "has 20"],
    ),
    (
        "missing_storage.bin",
        &["missing", "archive/data/0", "\"weight\""],
    ),
    ("truncated_pkl.bin", &["truncated", "data.pkl"]),
    ("truncated_legacy.bin", &["truncated"]),
    (
        "huge_tensor.bin",
        &["shorter", "100000000000 bytes", "has 64"],
    ),
    ("overflow_tensor.bin", &["overflows"]),
    ("unsupported_dtype.bin", &["\"ids\"", "torch.LongStorage"]),
];

#[test]
fn hostile_and_broken_files_give_clear_errors() {
    for (file, words) in BROKEN {
        let message = read_err(file, &keep_all);
        for word in words.iter().chain([file]) {
            assert!(
                message.contains(word),
                "{file}: {word:?} missing from: {message}"
            );
        }
    }
}

#[test]
fn hostile_pickles_execute_nothing() {
    // Each payload would run `touch "${TMPDIR:-/tmp}/gpt2_ndarray_pwned_marker"`.
    let marker = std::env::temp_dir().join("gpt2_ndarray_pwned_marker");
    let _ = fs::remove_file(&marker);
    for file in [
        "hostile_os_system.bin",
        "hostile_eval.bin",
        "hostile_popen.bin",
    ] {
        read_err(file, &keep_all);
        assert!(!marker.exists(), "{file} created {}", marker.display());
    }
}

#[test]
fn unsupported_dtype_is_fine_when_not_kept() {
    let tensors = read_ok("unsupported_dtype.bin", &|key: &str| key != "ids");
    assert_eq!(tensors.keys().collect::<Vec<_>>(), ["weight"]);
    assert_eq!(tensors["weight"].as_slice(), &[1.0f32; 3][..]);
}

/// Every truncation and a byte flip at every position of a legacy file (whose
/// pickles are inline) must give `Ok` or `Err`, never a panic.
#[test]
fn damaged_legacy_files_never_panic() {
    let original = fs::read(golden("tiny_legacy.bin")).unwrap();
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("damaged_legacy_{}.bin", std::process::id()));
    // One file, edited in place: rewriting a file per case is slow on some file systems.
    let mut file = fs::File::create(&path).unwrap();
    file.write_all(&original).unwrap();
    for i in 0..original.len() {
        file.set_len(i as u64).unwrap();
        assert!(
            read_pytorch_bin(&path, &keep_all).is_err(),
            "prefix {i} loaded"
        );
        file.seek(SeekFrom::Start(i as u64)).unwrap();
        file.write_all(&[original[i] ^ 0xff]).unwrap();
        file.write_all(&original[i + 1..]).unwrap();
        let _ = read_pytorch_bin(&path, &keep_all);
        file.seek(SeekFrom::Start(i as u64)).unwrap();
        file.write_all(&original[i..=i]).unwrap();
    }
    fs::remove_file(&path).unwrap();
}

/// The unpickler on its own: `data.pkl` of the zip file with every byte
/// replaced by a few interesting values, and truncated at every length.
#[test]
fn damaged_pickles_never_panic() {
    let file = fs::File::open(golden("tiny_proto4.bin")).unwrap();
    let mut archive = zip::ZipArchive::new(file).unwrap();
    let mut pkl = Vec::new();
    std::io::Read::read_to_end(
        &mut archive.by_name("tiny_proto4/data.pkl").unwrap(),
        &mut pkl,
    )
    .unwrap();
    assert!(pickle::load(pkl.as_slice()).is_ok());
    for i in 0..pkl.len() {
        assert!(pickle::load(&pkl[..i]).is_err(), "prefix {i} parsed");
        for byte in [0x00, 0xff, 0x7f, 0x80, b'(', b'h', b't', b'R', b'Q'] {
            let mut damaged = pkl.clone();
            damaged[i] = byte;
            let _ = pickle::load(damaged.as_slice());
        }
    }
}
