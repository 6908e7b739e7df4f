//! Shared by every golden test: where the golden files live, how to read one, and
//! [`assert_close`], the one comparison every test uses.
//!
//! The golden files are `.npy` arrays written by the scripts in `python_ref/`
//! (PyTorch / transformers in fp32): `golden/blocks/*.npy` by `python_ref/blocks.py`, ...
//!
//! Each test binary compiles this module on its own and uses only part of it,
//! hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod blocks;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayViewD, Dimension};

/// A tolerance: `got` matches `expected` when `|got - expected| <= atol + rtol·|expected|`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol {
    /// Absolute part of the budget: what matters for entries near 0.
    pub atol: f32,
    /// Relative part of the budget, scaled by `|expected|`: what matters for large entries.
    pub rtol: f32,
}

/// One fp32 operation or a short chain of them (a dot product, a softmax, a layer
/// norm, one attention head): the results differ from PyTorch's only by summation
/// order and the last bit of `exp`/`tanh`/`erf`, a few ulp, i.e. ~1e-7 relative;
/// rtol 1e-5 leaves two orders of magnitude of room, atol 1e-6 covers entries
/// that are ~0 by cancellation.
pub const SINGLE_OP: Tol = Tol {
    atol: 1e-6,
    rtol: 1e-5,
};

/// Activations of a whole model (hidden states, logits): thousands of sums of
/// hundreds of terms each, through a dozen layers, accumulate rounding differences
/// of ~1e-5 on values of size ~1-100; 1e-4 is the usual fp32 parity bound.
pub const MODEL: Tol = Tol {
    atol: 1e-4,
    rtol: 1e-4,
};

/// Conversions that must not change a single bit (loading a checkpoint,
/// f16 → f32, reshapes, gathers such as an embedding lookup).
pub const EXACT: Tol = Tol {
    atol: 0.0,
    rtol: 0.0,
};

/// `CARGO_MANIFEST_DIR/golden`, the root of every golden file.
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden")
}

/// Read a float32 `.npy` file of any shape.
///
/// Panics with the file's path, the reason, and the script to run when the file
/// is missing or unreadable (goldens are generated, see `python_ref/`).
///
/// A directory of many small `.npy` files may be committed packed as one
/// uncompressed `<dir>.npz` beside it (`python_ref/export_model.py`'s
/// `pack_npz`: a file takes a disk block, a member does not): `<dir>/<name>.npy`
/// is then read from member `<name>.npy` of `<dir>.npz`.
pub fn read_f32(path: impl AsRef<Path>) -> ArrayD<f32> {
    let path = path.as_ref();
    let read = || -> Result<ArrayD<f32>, Box<dyn std::error::Error>> {
        if path.exists() {
            return Ok(ndarray_npy::read_npy(path)?);
        }
        let (dir, name) = (
            path.parent().ok_or("no parent")?,
            path.file_name().ok_or("no name")?,
        );
        let archive = std::fs::File::open(dir.with_extension("npz"))?;
        let mut member = zip::ZipArchive::new(archive)?;
        let member = member.by_name(name.to_str().ok_or("not UTF-8")?)?;
        Ok(ndarray_npy::ReadNpyExt::read_npy(member)?)
    };
    read().unwrap_or_else(|err| {
        panic!(
            "cannot read golden file {}: {err}\n\
             the golden files are generated: run {} (needs python3 with torch, transformers, numpy)",
            path.display(),
            script_for(path),
        )
    })
}

/// The script that writes a golden file: `golden/<dir>/...` comes from `python_ref/<dir>.py`.
fn script_for(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = path
        .strip_prefix(golden_dir())
        .ok()
        .and_then(|rel| rel.components().next())
        .and_then(|dir| dir.as_os_str().to_str())
        .map(|dir| Path::new("python_ref").join(format!("{dir}.py")))
        .filter(|script| root.join(script).is_file());
    match script {
        Some(script) => format!("`python3 {}`", script.display()),
        None => "the script in python_ref/ that writes it".to_string(),
    }
}

/// Assert that every element of `got` is within `tol` of `expected`:
/// `|g - e| <= atol + rtol·|e|`.
///
/// Infinities match only an equal infinity (same sign); NaN matches nothing, not
/// even NaN. Shapes must be equal. On failure, panics naming the tensor and its
/// shape, the worst element (index, expected, found, and how many times its budget
/// the difference is), and how many elements failed out of how many.
///
/// On success prints (visible with `--nocapture`) the worst difference seen and
/// the share of its budget it used.
pub fn assert_close(name: &str, got: ArrayViewD<f32>, expected: ArrayViewD<f32>, tol: Tol) {
    assert!(
        got.shape() == expected.shape(),
        "{name}: shape mismatch: got {:?}, expected {:?}",
        got.shape(),
        expected.shape()
    );

    let mut failed = 0usize;
    let mut worst: Option<Worst> = None; // largest share of its budget, the first on ties
    for ((index, &e), &g) in expected.indexed_iter().zip(got.iter()) {
        let diff = (f64::from(g) - f64::from(e)).abs();
        let budget = f64::from(tol.atol) + f64::from(tol.rtol) * f64::from(e).abs();
        // `g == e` covers equal infinities; any other non-finite pair (a NaN, an
        // infinity against anything else) fails, whatever the budget (which an
        // infinite `e` would make infinite).
        let finite = g.is_finite() && e.is_finite();
        let ok = g == e || (finite && diff <= budget);
        let used = if g == e {
            0.0
        } else if !finite || budget == 0.0 {
            f64::INFINITY
        } else {
            diff / budget // > 1 exactly when the element fails
        };
        if !ok {
            failed += 1;
        }
        // Rank by share of budget, then by |diff| (with a zero budget every failure
        // uses "infinitely many" budgets, and the largest difference is the news).
        let rank = |used: f64, diff: f64| (used, if diff.is_nan() { f64::INFINITY } else { diff });
        if worst
            .as_ref()
            .is_none_or(|w| rank(used, diff) > rank(w.used, w.diff))
        {
            let index = index.slice().to_vec();
            worst = Some(Worst {
                index,
                expected: e,
                got: g,
                diff,
                budget,
                used,
            });
        }
    }

    let total = expected.len();
    let Some(w) = worst else {
        println!("{name} {:?}: empty, nothing to compare", expected.shape());
        return;
    };
    if failed == 0 {
        println!(
            "{name} {:?}: ok, worst |diff| {:.3e} at {:?} ({:.1}% of its budget)",
            expected.shape(),
            w.diff,
            w.index,
            100.0 * w.used
        );
        return;
    }

    let mut msg = String::new();
    let _ = write!(
        msg,
        "{name} {:?}: {failed} of {total} elements differ by more than atol + rtol·|expected| \
         (atol = {:?}, rtol = {:?})\n  worst at {:?}: expected {:?}, found {:?}",
        expected.shape(),
        tol.atol,
        tol.rtol,
        w.index,
        w.expected,
        w.got,
    );
    if w.diff.is_nan() {
        let _ = write!(msg, " (NaN never matches)");
    } else if !w.expected.is_finite() || !w.got.is_finite() {
        let _ = write!(msg, " (an infinity matches only the same infinity)");
    } else if w.budget == 0.0 {
        let _ = write!(msg, " (|diff| = {:.3e}, budget 0)", w.diff);
    } else {
        let _ = write!(
            msg,
            " (|diff| = {:.3e}, {:.3}x its budget of {:.3e})",
            w.diff, w.used, w.budget
        );
    }
    panic!("{msg}");
}

/// The element that used the largest share of its budget so far.
struct Worst {
    index: Vec<usize>,
    expected: f32,
    got: f32,
    diff: f64,
    budget: f64,
    used: f64,
}

/// A model directory, its references (written by `python_ref/export_model.py`),
/// and the tolerance its whole-model activations need.
pub struct Case {
    pub model: PathBuf,
    pub reference: PathBuf,
    pub tol: Tol,
}

/// Trained weights give larger activations (residual norms in the hundreds,
/// peaked softmaxes), so their absolute rounding differences are larger than
/// the random model's; still fp32 summation-order noise.
pub const TRAINED: Tol = Tol {
    atol: 5e-4,
    rtol: 1e-4,
};

/// The models the golden tests run on: the random golden model always; the
/// bundled trained model when its references are committed; and `GPT2_DIR`
/// (references in `GPT2_REFERENCE`, else `GPT2_DIR/reference`) when set.
pub fn reference_cases() -> Vec<Case> {
    let mut cases = vec![Case {
        model: golden_dir().join("model"),
        reference: golden_dir().join("reference"),
        tol: MODEL,
    }];
    if golden_dir().join("kjv-gpt2/manifest.json").is_file() {
        cases.push(Case {
            model: Path::new(env!("CARGO_MANIFEST_DIR")).join("models/kjv-gpt2"),
            reference: golden_dir().join("kjv-gpt2"),
            tol: TRAINED,
        });
    }
    if let Ok(dir) = std::env::var("GPT2_DIR") {
        let dir = PathBuf::from(dir);
        let reference =
            std::env::var("GPT2_REFERENCE").map_or_else(|_| dir.join("reference"), PathBuf::from);
        cases.push(Case {
            model: dir,
            reference,
            tol: TRAINED,
        });
    }
    cases
}

/// The tiny variant models of `python_ref/variants.py` (one non-default config
/// field each): `(name, directory)`, from `golden/variants/manifest.json`.
pub fn variant_dirs() -> Vec<(String, PathBuf)> {
    let root = golden_dir().join("variants");
    variants_manifest()["variants"]
        .as_array()
        .expect("variants")
        .iter()
        .map(|v| {
            let name = v["name"].as_str().expect("name").to_owned();
            let dir = root.join(&name);
            (name, dir)
        })
        .collect()
}

/// `golden/variants/manifest.json`: the prompts' ids, the variants, the tensor names.
pub fn variants_manifest() -> serde_json::Value {
    let path = golden_dir().join("variants/manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (run python3 python_ref/variants.py)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("manifest.json is JSON")
}

/// The ids of prompt `name` (`"short"`, `"long"`) of the variants' manifest.
pub fn variant_prompt(name: &str) -> Vec<u32> {
    variants_manifest()["prompts"][name]
        .as_array()
        .expect("prompt ids")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect()
}

/// The tensor names a golden manifest lists (`manifest["tensors"]`), in the
/// order the forward pass computes them.
pub fn tensor_names(manifest: &serde_json::Value) -> Vec<String> {
    manifest["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .map(|v| v.as_str().expect("name").to_owned())
        .collect()
}
