//! `inspect::architecture` against PyTorch's own `print(model)`, and the
//! parameter counts against `model.num_parameters()`.

mod common;

use common::golden_dir;
use gpt2_ndarray::checkpoint::{Dtype, Tensor, Tensors};
use gpt2_ndarray::inspect::{architecture, parameter_table, ParameterCounts};
use gpt2_ndarray::{Config, Gpt2};
use ndarray::ArrayD;
use std::path::{Path, PathBuf};

fn golden_model() -> Gpt2 {
    Gpt2::from_dir(golden_dir().join("model")).expect("the golden model loads")
}

/// PyTorch's print-out without the `Dropout` lines. `architecture` leaves
/// them out on purpose: dropout is the identity at inference and holds no
/// parameters, and printing its `p` would need the config's dropout rates,
/// training settings this crate does not read. Every other line must match
/// exactly.
fn without_dropout(text: &str) -> String {
    text.lines()
        .filter(|line| !line.contains("Dropout("))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `(model directory, PyTorch's print-out of it)`: the golden model, and the
/// bundled trained model when its references are there.
fn cases() -> Vec<(PathBuf, PathBuf)> {
    let mut cases = vec![(
        golden_dir().join("model"),
        golden_dir().join("reference/architecture.txt"),
    )];
    let trained = golden_dir().join("kjv-gpt2/architecture.txt");
    if trained.is_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/kjv-gpt2");
        cases.push((dir, trained));
    }
    cases
}

#[test]
fn architecture_is_pytorchs_print_out_without_dropout() {
    for (dir, path) in cases() {
        let reference = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let expected = without_dropout(reference.trim_end());
        let got = architecture(&Gpt2::from_dir(&dir).expect("the model loads"));
        if got != expected {
            let first = got
                .lines()
                .zip(expected.lines())
                .position(|(g, e)| g != e)
                .unwrap_or(got.lines().count().min(expected.lines().count()));
            panic!(
                "{}: architecture differs from PyTorch's print(model) (Dropout lines removed) \
                 at line {}\n--- got ---\n{got}\n--- expected ---\n{expected}",
                dir.display(),
                first + 1
            );
        }
    }
}

/// A model with one block, an untied head, ReLU and `ε = 1e-6`, all zeros.
fn one_block_untied() -> Gpt2 {
    let config = Config::from_json(
        r#"{"vocab_size": 11, "n_positions": 6, "n_embd": 8, "n_layer": 1, "n_head": 2,
            "n_inner": 12, "activation_function": "relu", "layer_norm_epsilon": 1e-6,
            "tie_word_embeddings": false}"#,
    )
    .unwrap();
    let shapes: [(&str, &[usize]); 15] = [
        ("wte.weight", &[11, 8]),
        ("wpe.weight", &[6, 8]),
        ("h.0.ln_1.weight", &[8]),
        ("h.0.ln_1.bias", &[8]),
        ("h.0.attn.c_attn.weight", &[8, 24]),
        ("h.0.attn.c_attn.bias", &[24]),
        ("h.0.attn.c_proj.weight", &[8, 8]),
        ("h.0.attn.c_proj.bias", &[8]),
        ("h.0.ln_2.weight", &[8]),
        ("h.0.ln_2.bias", &[8]),
        ("h.0.mlp.c_fc.weight", &[8, 12]),
        ("h.0.mlp.c_fc.bias", &[12]),
        ("h.0.mlp.c_proj.weight", &[12, 8]),
        ("h.0.mlp.c_proj.bias", &[8]),
        ("lm_head.weight", &[11, 8]),
    ];
    let mut tensors: Tensors = shapes
        .iter()
        .map(|&(name, shape)| {
            let tensor = Tensor::owned(Dtype::F32, ArrayD::zeros(shape));
            (name.to_owned(), tensor)
        })
        .collect();
    for name in ["ln_f.weight", "ln_f.bias"] {
        let tensor = Tensor::owned(Dtype::F32, ArrayD::zeros(vec![8]));
        tensors.insert(name.to_owned(), tensor);
    }
    Gpt2::from_tensors(config, tensors).expect("the one-block model builds")
}

#[test]
fn a_single_block_untied_model_prints_as_pytorch_prints_it() {
    // print(GPT2LMHeadModel(GPT2Config(vocab_size=11, n_positions=6, n_embd=8, n_layer=1,
    //     n_head=2, n_inner=12, activation_function="relu", layer_norm_epsilon=1e-6,
    //     tie_word_embeddings=False))), transformers 4.57, Dropout lines removed:
    let expected = "\
GPT2LMHeadModel(
  (transformer): GPT2Model(
    (wte): Embedding(11, 8)
    (wpe): Embedding(6, 8)
    (h): ModuleList(
      (0): GPT2Block(
        (ln_1): LayerNorm((8,), eps=1e-06, elementwise_affine=True)
        (attn): GPT2Attention(
          (c_attn): Conv1D(nf=24, nx=8)
          (c_proj): Conv1D(nf=8, nx=8)
        )
        (ln_2): LayerNorm((8,), eps=1e-06, elementwise_affine=True)
        (mlp): GPT2MLP(
          (c_fc): Conv1D(nf=12, nx=8)
          (c_proj): Conv1D(nf=8, nx=12)
          (act): ReLU()
        )
      )
    )
    (ln_f): LayerNorm((8,), eps=1e-06, elementwise_affine=True)
  )
  (lm_head): Linear(in_features=8, out_features=11, bias=False)
)";
    assert_eq!(architecture(&one_block_untied()), expected);
}

#[test]
fn parameter_counts_equal_pytorchs_num_parameters_tied_head_counted_once() {
    let model = golden_model();
    let counts = ParameterCounts::of(&model);
    // GPT2LMHeadModel.from_pretrained("golden/model").num_parameters() = 2503392
    assert_eq!(counts.total(), 2_503_392);
    assert_eq!(counts.total(), model.config.num_parameters());
    assert_eq!(
        counts.lm_head, None,
        "the golden model's head is tied to wte"
    );
    assert_eq!(counts.wte, 50257 * 48);
    assert_eq!(counts.blocks.len(), 3);
    // ln 2·48, c_attn 48·144 + 144, c_proj 48·48 + 48, ln 2·48, c_fc 48·192 + 192, c_proj 192·48 + 48
    assert_eq!(
        counts.blocks[0].total(),
        96 + 7056 + 2352 + 96 + 9408 + 9264
    );

    let table = parameter_table(&model);
    let total_line = table.lines().find(|l| l.starts_with("total")).unwrap();
    assert!(total_line.contains("2,503,392"), "{table}");
    // Stored as f32 by export_model.py: 4 bytes a parameter, wte once.
    assert!(table.contains("stored as f32: 10,013,568 bytes"), "{table}");
}

#[test]
fn an_untied_head_is_counted_as_its_own_matrix() {
    let model = one_block_untied();
    let counts = ParameterCounts::of(&model);
    // GPT2LMHeadModel(<the config above>).num_parameters() = 772
    assert_eq!(counts.total(), 772);
    assert_eq!(counts.lm_head, Some(11 * 8));
    assert_eq!(counts.total(), model.config.num_parameters());
}
