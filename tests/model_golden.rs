//! The whole model against transformers' `GPT2LMHeadModel`, activation by
//! activation, for both checkpoint formats.
//!
//! References come from `python_ref/export_model.py`: by default the committed
//! random-weight model `golden/model` with `golden/reference`. Point
//! `GPT2_DIR` at any GPT-2 directory (after `python python_ref/export_model.py
//! --model DIR`, which writes `DIR/reference`) to run the same checks on it.

mod common;

use std::path::Path;

use common::{assert_close, golden_dir, read_f32, reference_cases, tensor_names, MODEL};
use gpt2_ndarray::model::WeightsFormat;
use gpt2_ndarray::{Gpt2, Trace};
use ndarray::{Array2, ArrayD};
use serde_json::Value;

fn manifest(reference: &Path) -> Value {
    let path = reference.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (run python_ref/export_model.py)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("manifest.json is JSON")
}

fn ids_of(prompt: &Value) -> Vec<u32> {
    prompt["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect()
}

fn formats(dir: &Path) -> Vec<WeightsFormat> {
    [WeightsFormat::Safetensors, WeightsFormat::PytorchBin]
        .into_iter()
        .filter(|f| dir.join(f.file_name()).is_file())
        .collect()
}

/// Every activation transformers recorded, for every prompt and both formats.
#[test]
fn every_activation_matches_transformers_for_both_checkpoint_formats() {
    for case in reference_cases() {
        let manifest = manifest(&case.reference);
        let names = tensor_names(&manifest);
        let found = formats(&case.model);
        assert!(!found.is_empty(), "no weights in {}", case.model.display());
        for format in found {
            let model = Gpt2::from_dir_with(&case.model, format)
                .unwrap_or_else(|e| panic!("loading {} ({format:?}): {e:#}", case.model.display()));
            for prompt in manifest["prompts"].as_array().expect("prompts") {
                let ids = ids_of(prompt);
                let dir = case.reference.join(prompt["name"].as_str().expect("name"));
                let mut trace = Trace::all();
                model.forward_traced(&ids, &mut trace).expect("forward");
                for name in &names {
                    let expected = read_f32(dir.join(format!("{name}.npy")));
                    let got = trace
                        .get(name)
                        .unwrap_or_else(|| panic!("the trace has no {name}"));
                    let label = format!(
                        "{} {format:?} {:?} {name}",
                        case.model.display(),
                        prompt["text"]
                    );
                    assert_close(&label, got.view(), expected.view(), case.tol);
                }
            }
        }
    }
}

/// The most likely next token, and the top 5, are transformers' exactly.
#[test]
fn last_position_argmax_and_top5_are_identical() {
    for case in reference_cases() {
        let manifest = manifest(&case.reference);
        let model = Gpt2::from_dir(&case.model).expect("load");
        for prompt in manifest["prompts"].as_array().expect("prompts") {
            let logits = model.next_token_logits(&ids_of(prompt)).expect("forward");
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let expected: Vec<usize> = prompt["top5"]
                .as_array()
                .expect("top5")
                .iter()
                .map(|pair| pair[0].as_u64().expect("id") as usize)
                .collect();
            assert_eq!(order[..5], expected[..], "top-5 of {:?}", prompt["text"]);
        }
    }
}

/// Both formats load to bit-identical weights (the .bin in the 2019 legacy
/// layout: no `transformer.` prefix, no `lm_head`, mask buffers present).
/// The f32 matrices of the safetensors file are read in place from its
/// memory map; those of the .bin are decoded into owned arrays.
#[test]
fn safetensors_and_pytorch_bin_load_identical_weights() {
    let dir = golden_dir().join("model");
    let a = Gpt2::from_dir_with(&dir, WeightsFormat::Safetensors).expect("safetensors");
    let b = Gpt2::from_dir_with(&dir, WeightsFormat::PytorchBin).expect("pytorch_model.bin");
    let matrices = |m: &Gpt2| {
        let mut all = vec![m.wte.clone(), m.wpe.clone()];
        for block in &m.h {
            all.push(block.attn.c_attn.weight.clone());
            all.push(block.attn.c_proj.weight.clone());
            all.push(block.mlp.c_fc.weight.clone());
            all.push(block.mlp.c_proj.weight.clone());
        }
        all
    };
    assert!(
        matrices(&a).iter().all(|w| w.is_shared()),
        "safetensors f32 weights are mapped"
    );
    assert!(
        matrices(&b).iter().all(|w| !w.is_shared()),
        ".bin weights are owned"
    );
    assert_eq!(a.wte, b.wte);
    assert_eq!(a.wpe, b.wpe);
    for (x, y) in a.h.iter().zip(&b.h) {
        assert_eq!(x.attn.c_attn.weight, y.attn.c_attn.weight);
        assert_eq!(x.mlp.c_proj.bias, y.mlp.c_proj.bias);
        assert_eq!(x.ln_2.weight, y.ln_2.weight);
    }
    assert_eq!(a.ln_f.bias, b.ln_f.bias);
}

/// A left-padded batch gives, at its real positions, transformers' batched
/// logits and our own one-by-one logits.
#[test]
fn padded_batch_matches_transformers_and_one_by_one() {
    let reference = golden_dir().join("reference/batch");
    let model = Gpt2::from_dir(golden_dir().join("model")).expect("load");
    let ids: ArrayD<i64> = ndarray_npy::read_npy(reference.join("ids.npy")).expect("ids");
    let mask: ArrayD<i64> = ndarray_npy::read_npy(reference.join("mask.npy")).expect("mask");
    let expected = read_f32(reference.join("logits.npy"));
    let ids: Array2<u32> = ids
        .into_dimensionality()
        .expect("[B, T]")
        .mapv(|v| v as u32);
    let mask: Array2<bool> = mask.into_dimensionality().expect("[B, T]").mapv(|v| v != 0);

    let got = model.forward_batch(&ids, &mask).expect("batch forward");
    for b in 0..ids.nrows() {
        let real: Vec<usize> = (0..ids.ncols()).filter(|&t| mask[[b, t]]).collect();
        let real_ids: Vec<u32> = real.iter().map(|&t| ids[[b, t]]).collect();
        let alone = model.forward(&real_ids).expect("forward");
        for (i, &t) in real.iter().enumerate() {
            let row = got.slice(ndarray::s![b, t, ..]);
            assert_close(
                &format!("batch row {b} position {t} vs transformers"),
                row.into_dyn(),
                expected.slice(ndarray::s![b, t, ..]).into_dyn(),
                MODEL,
            );
            assert_close(
                &format!("batch row {b} position {t} vs alone"),
                row.into_dyn(),
                alone.row(i).into_dyn(),
                MODEL,
            );
        }
    }
}

/// A trace records what it was asked for and nothing else: a prefix, or exact names.
#[test]
fn a_trace_records_exactly_the_steps_asked_for() {
    let model = Gpt2::from_dir(golden_dir().join("model")).expect("load");
    let ids = [464, 3139, 286];
    let mut trace = Trace::only(&["h.1.attn.probs"]);
    model.forward_traced(&ids, &mut trace).unwrap();
    assert_eq!(trace.tensors.keys().collect::<Vec<_>>(), ["h.1.attn.probs"]);
    assert_eq!(trace.get("h.1.attn.probs").unwrap().shape(), [4, 3, 3]);

    let mut trace = Trace::names(&["h.2", "logits"]);
    model.forward_traced(&ids, &mut trace).unwrap();
    assert_eq!(trace.tensors.keys().collect::<Vec<_>>(), ["h.2", "logits"]);

    let mut trace = Trace::off();
    model.forward_traced(&ids, &mut trace).unwrap();
    assert!(trace.tensors.is_empty());
}
