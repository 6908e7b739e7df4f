//! `inspect`: the attention maps, residual norms and logit lens it reports are
//! the model's own activations (checked against transformers' golden files),
//! and the PNG figures come out at their documented size.

mod common;

use common::{assert_close, golden_dir, read_f32, reference_cases, SINGLE_OP};
use gpt2_ndarray::inspect::{entropy, inspect, logit_lens, top_tokens, Inspection};
use gpt2_ndarray::reference::softmax;
use gpt2_ndarray::{Gpt2, Tokenizer};
use ndarray::{array, Array1, Array2, Axis, Ix2};
use std::path::{Path, PathBuf};

fn load(dir: &Path) -> (Gpt2, Tokenizer) {
    (
        Gpt2::from_dir(dir).expect("the model loads"),
        Tokenizer::from_dir(dir).expect("the tokenizer loads"),
    )
}

fn golden() -> (Gpt2, Tokenizer) {
    load(&golden_dir().join("model"))
}

/// The prompts of a reference directory, from its `manifest.json`: the
/// directory of each one's recorded activations and its ids.
fn prompts(reference: &Path) -> Vec<(PathBuf, Vec<u32>)> {
    let text = std::fs::read_to_string(reference.join("manifest.json")).expect("manifest.json");
    let manifest: serde_json::Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    let prompts = manifest["prompts"].as_array().expect("prompts");
    assert!(!prompts.is_empty(), "no prompts in {}", reference.display());
    prompts
        .iter()
        .map(|p| {
            let name = p["name"].as_str().expect("name");
            let ids = p["ids"].as_array().expect("ids");
            let ids = ids.iter().map(|id| id.as_u64().unwrap() as u32).collect();
            (reference.join(name), ids)
        })
        .collect()
}

fn matrix(path: PathBuf) -> Array2<f32> {
    read_f32(path).into_dimensionality::<Ix2>().unwrap()
}

#[test]
fn every_attention_row_sums_to_one_and_is_zero_above_the_diagonal() {
    for case in reference_cases() {
        let (model, tokenizer) = load(&case.model);
        for (reference, ids) in prompts(&case.reference) {
            let name = reference.display();
            let seen = inspect(&model, &tokenizer, &ids, 1).unwrap();
            assert_eq!(seen.attention.len(), model.config.n_layer);
            for (i, block) in seen.attention.iter().enumerate() {
                let (n_head, t, tk) = block.probs.dim();
                assert_eq!((n_head, t, tk), (model.config.n_head, ids.len(), ids.len()));
                for h in 0..n_head {
                    let map = seen.attention_map(i, h);
                    for (q, row) in map.rows().into_iter().enumerate() {
                        let sum: f32 = row.sum();
                        let msg = format!("{name} h.{i} head {h} row {q}");
                        assert!((sum - 1.0).abs() < 1e-5, "{msg} sums to {sum}");
                        for k in q + 1..t {
                            assert_eq!(row[k], 0.0, "{msg} sees key {k}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn attention_maps_and_residual_norms_are_transformers_activations() {
    for case in reference_cases() {
        let (model, tokenizer) = load(&case.model);
        // embed, h.0, ..., h.{n-1}: the snapshots of the residual stream
        let names: Vec<String> = std::iter::once("embed".to_owned())
            .chain((0..model.config.n_layer).map(|i| format!("h.{i}")))
            .collect();
        for (reference, ids) in prompts(&case.reference) {
            let name = reference.display();
            let seen = inspect(&model, &tokenizer, &ids, 1).unwrap();
            for (i, block) in seen.attention.iter().enumerate() {
                let expected = read_f32(reference.join(format!("h.{i}.attn.probs.npy")));
                assert_close(
                    &format!("{name} h.{i}.attn.probs"),
                    block.probs.view().into_dyn(),
                    expected.view(),
                    case.tol,
                );
            }
            let got: Vec<&str> = seen.layers.iter().map(|l| l.name.as_str()).collect();
            assert_eq!(got, names);
            for (layer, snapshot) in seen.layers.iter().zip(&names) {
                let x = matrix(reference.join(format!("{snapshot}.npy")));
                let norms: Array1<f32> = x.map_axis(Axis(1), |row| row.dot(&row).sqrt());
                assert_close(
                    &format!("{name} ‖{snapshot}‖"),
                    layer.residual_norm.view().into_dyn(),
                    norms.view().into_dyn(),
                    case.tol,
                );
            }
        }
    }
}

#[test]
fn logit_lens_of_the_last_layer_is_the_models_logits() {
    for case in reference_cases() {
        let (model, tokenizer) = load(&case.model);
        let last = format!("h.{}", model.config.n_layer - 1);
        for (reference, ids) in prompts(&case.reference) {
            let name = reference.display();
            // The lens on transformers' last hidden state gives transformers' logits...
            let x = matrix(reference.join(format!("{last}.npy")));
            let expected = read_f32(reference.join("logits.npy"));
            let lens = logit_lens(&model, x.view());
            assert_close(
                &format!("{name} lens({last})"),
                lens.view().into_dyn(),
                expected.view(),
                case.tol,
            );
            // ...and the inspection's last lens ranks the tokens as the model's own logits do.
            let seen = inspect(&model, &tokenizer, &ids, 5).unwrap();
            let logits = model.forward(&ids).unwrap();
            let lens_last = seen.layers.last().unwrap();
            assert_eq!(lens_last.name, last);
            for (pos, top) in lens_last.top.iter().enumerate() {
                let want = top_tokens(softmax(logits.row(pos)).view(), 5);
                let got_ids: Vec<u32> = top.iter().map(|p| p.id).collect();
                let want_ids: Vec<u32> = want.iter().map(|&(id, _)| id).collect();
                assert_eq!(got_ids, want_ids, "{name} position {pos}");
                let got = Array1::from_iter(top.iter().map(|p| p.prob));
                let want = Array1::from_iter(want.iter().map(|&(_, p)| p));
                assert_close(
                    &format!("{name} top-5 at {pos}"),
                    got.view().into_dyn(),
                    want.view().into_dyn(),
                    case.tol,
                );
            }
        }
    }
}

#[test]
fn entropy_of_known_rows_matches_torch() {
    // torch.distributions.Categorical(probs=torch.tensor([0.7, 0.2, 0.1])).entropy() = 0.8018185496330261
    let h = entropy(array![0.7, 0.2, 0.1].view());
    assert_close(
        "H([0.7, 0.2, 0.1])",
        array![h].view().into_dyn(),
        array![0.801_818_55f32].view().into_dyn(),
        SINGLE_OP,
    );
    // A masked key has probability 0 and adds nothing (0·ln 0 = 0):
    // p = torch.softmax(torch.tensor([1., 2., 3., -inf]), 0)
    // torch.distributions.Categorical(probs=p).entropy() = 0.8323955535888672
    let p = softmax(array![1.0, 2.0, 3.0, f32::NEG_INFINITY].view());
    assert_close(
        "H(softmax([1, 2, 3, -inf]))",
        array![entropy(p.view())].view().into_dyn(),
        array![0.832_395_55f32].view().into_dyn(),
        SINGLE_OP,
    );
    assert_eq!(entropy(array![1.0, 0.0].view()), 0.0);
}

#[test]
fn head_entropy_is_the_mean_row_entropy_and_the_first_row_has_none() {
    let (model, tokenizer) = golden();
    let (_, ids) = prompts(&golden_dir().join("reference")).remove(0);
    let seen = inspect(&model, &tokenizer, &ids, 1).unwrap();
    for (i, block) in seen.attention.iter().enumerate() {
        for (h, head) in block.heads.iter().enumerate() {
            // Query 0 sees only key 0: certainty, entropy 0.
            assert_eq!(head.row_entropy[0], 0.0, "h.{i} head {h}");
            let map = seen.attention_map(i, h);
            for (q, row) in map.rows().into_iter().enumerate() {
                assert_eq!(head.row_entropy[q], entropy(row));
                assert!(head.row_entropy[q] <= ((q + 1) as f32).ln() + 1e-5);
            }
            let mean = head.row_entropy.sum() / ids.len() as f32;
            assert!((head.entropy - mean).abs() < 1e-6);
            // The top key is where the last query puts the most weight.
            let last = map.row(ids.len() - 1);
            assert_eq!(last[head.top_key], head.top_weight);
            assert!(last.iter().all(|&w| w <= head.top_weight));
        }
    }
}

#[test]
fn top_tokens_are_sorted_by_value_then_id() {
    let x = array![0.1, 0.5, 0.2, 0.5, 0.05];
    assert_eq!(top_tokens(x.view(), 3), vec![(1, 0.5), (3, 0.5), (2, 0.2)]);
    assert_eq!(top_tokens(x.view(), 9).len(), 5);
}

#[test]
fn report_has_a_row_per_layer_in_each_table() {
    let (model, tokenizer) = golden();
    let ids = tokenizer.encode("The capital of France is").unwrap();
    let seen: Inspection = inspect(&model, &tokenizer, &ids, 2).unwrap();
    let report = seen.report(true);
    for name in ["embed", "h.0", "h.1", "h.2"] {
        let rows = report
            .lines()
            .filter(|l| l.trim_start().starts_with(&format!("{name} ")))
            .count();
        // residual header is per position, so a layer name starts a row in the
        // lens tables (2) and, for blocks, the two attention tables (2 more)
        let want = if name == "embed" { 2 } else { 4 };
        assert_eq!(rows, want, "rows starting with {name}:\n{report}");
    }
    assert!(inspect(&model, &tokenizer, &ids, 0).is_err());
}

#[cfg(feature = "plot")]
mod figures {
    use super::*;
    use gpt2_ndarray::inspect::plot::{
        attention_grid_size, attention_png, logit_lens_png, logit_lens_size, write_all,
        LENS_MAX_POSITIONS,
    };

    fn decode(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
        let file = std::fs::File::open(path).unwrap();
        let mut reader = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    #[test]
    fn figure_sizes_follow_the_documented_formulas() {
        // (400·cols + 80) × (40 + 422·rows), cols = ⌈√n_head⌉, rows = ⌈n_head / cols⌉
        assert_eq!(attention_grid_size(4), (880, 884)); // 2 × 2
        assert_eq!(attention_grid_size(12), (1680, 1306)); // GPT-2 small: 4 × 3
        assert_eq!(attention_grid_size(25), (2080, 2150)); // GPT-2 XL: 5 × 5
        assert_eq!(attention_grid_size(1), (480, 462));
        // (64 + 88·P + 80) × (40 + 26·L + 56), P = min(T, 32)
        assert_eq!(logit_lens_size(4, 5), (584, 200));
        assert_eq!(
            logit_lens_size(13, 1000),
            (64 + 88 * 32 + 80, 40 + 26 * 13 + 56)
        );
        assert_eq!(LENS_MAX_POSITIONS, 32);
    }

    #[test]
    fn pngs_are_written_decode_and_have_the_documented_size() {
        let (model, tokenizer) = golden();
        let ids = tokenizer.encode("The capital of France is").unwrap();
        let seen = inspect(&model, &tokenizer, &ids, 3).unwrap();
        let dir = std::env::temp_dir().join(format!("gpt2-inspect-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        let path = dir.join("attention.png");
        let size = attention_png(&seen, 1, &path).unwrap();
        assert_eq!(size, (880, 884));
        let (w, h, pixels) = decode(&path);
        assert_eq!((w, h), size);
        assert_eq!(pixels.len(), (w * h * 3) as usize, "8-bit RGB");
        assert!(pixels.iter().any(|&b| b != 255), "something was drawn");
        assert!(
            attention_png(&seen, 3, &path).is_err(),
            "the model has 3 blocks"
        );

        let path = dir.join("lens.png");
        let size = logit_lens_png(&seen, &path).unwrap();
        assert_eq!(size, (584, 200));
        assert_eq!(decode(&path).0, 584);
        assert_eq!(decode(&path).1, 200);

        let written = write_all(&seen, &dir.join("all")).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "attention-layer0.png",
                "attention-layer1.png",
                "attention-layer2.png",
                "logit-lens.png"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
