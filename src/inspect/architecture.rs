//! The loaded model as PyTorch prints it, and where its parameters are.

use std::fmt::Write as _;

use crate::config::Activation;
use crate::model::{Block, Gpt2};
use crate::weights::{Conv1D, LayerNorm};

/// The model as a tree, in the shape of PyTorch's `print(GPT2LMHeadModel)`:
///
/// ```text
/// GPT2LMHeadModel(
///   (transformer): GPT2Model(
///     (wte): Embedding(50257, 768)
///     (wpe): Embedding(1024, 768)
///     (h): ModuleList(
///       (0-11): 12 x GPT2Block(
///         (ln_1): LayerNorm((768,), eps=1e-05, elementwise_affine=True)
///         (attn): GPT2Attention(
///           (c_attn): Conv1D(nf=2304, nx=768)
///           (c_proj): Conv1D(nf=768, nx=768)
///         )
///         ...
/// ```
///
/// Every number is read from the loaded weights (their shapes, the layer norms'
/// `ε`), not from the config, so the print-out shows what was actually loaded.
/// Consecutive blocks with the same print-out are folded as PyTorch's
/// `ModuleList` folds them (`(0-11): 12 x GPT2Block(...)`).
///
/// One difference: the `Dropout` modules (`drop`, `attn_dropout`,
/// `resid_dropout`, `mlp.dropout`) are left out. Dropout is the identity at
/// inference and holds no parameters; its rates are training settings this
/// crate does not read. Every other line is PyTorch's, character for
/// character (`tests/architecture.rs` checks it on the golden model).
///
/// ```
/// use gpt2_ndarray::{inspect::architecture, Gpt2};
/// # let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/model");
/// let model = Gpt2::from_dir(dir)?;
/// let tree = architecture(&model);
/// assert!(tree.contains("(c_attn): Conv1D(nf=144, nx=48)"));
/// assert!(tree.contains("(0-2): 3 x GPT2Block("));
/// # anyhow::Ok(())
/// ```
pub fn architecture(model: &Gpt2) -> String {
    let c = model.wte.ncols();
    let head = model.lm_head.as_ref().unwrap_or(&model.wte); // [vocab, C]
    let blocks = model
        .h
        .iter()
        .map(|block| gpt2_block(block, model.config.activation))
        .collect();
    let transformer = Module::new("GPT2Model")
        .child("wte", embedding(model.wte.dim()))
        .child("wpe", embedding(model.wpe.dim()))
        .child("h", module_list(blocks))
        .child("ln_f", layer_norm(&model.ln_f));
    let lm_head = Module::leaf(
        "Linear",
        format!("in_features={c}, out_features={}, bias=False", head.nrows()),
    );
    Module::new("GPT2LMHeadModel")
        .child("transformer", transformer)
        .child("lm_head", lm_head)
        .repr()
}

/// One module of the tree: its class name, the text inside its parentheses
/// (`extra_repr`) and its named children.
struct Module {
    name: String,
    extra: String,
    children: Vec<(String, String)>, // (key, already rendered child)
}

impl Module {
    fn new(name: &str) -> Self {
        Self::leaf(name, String::new())
    }

    fn leaf(name: &str, extra: String) -> Self {
        Module {
            name: name.to_owned(),
            extra,
            children: Vec::new(),
        }
    }

    fn child(self, key: &str, module: Module) -> Self {
        self.rendered_child(key.to_owned(), module.repr())
    }

    fn rendered_child(mut self, key: String, repr: String) -> Self {
        self.children.push((key, repr));
        self
    }

    /// `torch.nn.Module.__repr__`: `Name(extra)` for a leaf, else one child per
    /// line, `(key): child`, indented by two spaces.
    fn repr(&self) -> String {
        if self.children.is_empty() {
            return format!("{}({})", self.name, self.extra);
        }
        let mut out = format!("{}(", self.name);
        for (key, child) in &self.children {
            let _ = write!(out, "\n  ({key}): {}", indent(child));
        }
        out.push_str("\n)");
        out
    }
}

/// PyTorch's `_addindent(s, 2)`: every line but the first moves two spaces right.
fn indent(s: &str) -> String {
    s.replace('\n', "\n  ")
}

/// `nn.ModuleList`: runs of children with identical print-outs are folded into
/// `(first-last): n x Child(...)`.
fn module_list(children: Vec<Module>) -> Module {
    let reprs: Vec<String> = children.iter().map(Module::repr).collect();
    let mut list = Module::new("ModuleList");
    let mut start = 0;
    while start < reprs.len() {
        let end = (start..reprs.len())
            .take_while(|&i| reprs[i] == reprs[start])
            .last()
            .unwrap_or(start);
        list = if end == start {
            list.rendered_child(start.to_string(), reprs[start].clone())
        } else {
            let n = end - start + 1;
            list.rendered_child(format!("{start}-{end}"), format!("{n} x {}", reprs[start]))
        };
        start = end + 1;
    }
    list
}

fn gpt2_block(block: &Block, activation: Activation) -> Module {
    let attn = Module::new("GPT2Attention")
        .child("c_attn", conv1d(&block.attn.c_attn))
        .child("c_proj", conv1d(&block.attn.c_proj));
    let mlp = Module::new("GPT2MLP")
        .child("c_fc", conv1d(&block.mlp.c_fc))
        .child("c_proj", conv1d(&block.mlp.c_proj))
        .child("act", Module::new(activation_class(activation)));
    Module::new("GPT2Block")
        .child("ln_1", layer_norm(&block.ln_1))
        .child("attn", attn)
        .child("ln_2", layer_norm(&block.ln_2))
        .child("mlp", mlp)
}

fn embedding((rows, cols): (usize, usize)) -> Module {
    Module::leaf("Embedding", format!("{rows}, {cols}"))
}

fn conv1d(layer: &Conv1D) -> Module {
    Module::leaf(
        "Conv1D",
        format!("nf={}, nx={}", layer.n_out(), layer.n_in()),
    )
}

fn layer_norm(ln: &LayerNorm) -> Module {
    Module::leaf(
        "LayerNorm",
        format!(
            "({},), eps={}, elementwise_affine=True",
            ln.weight.len(),
            python_float(ln.eps)
        ),
    )
}

/// The class transformers' `ACT2FN` instantiates for each activation name.
fn activation_class(activation: Activation) -> &'static str {
    match activation {
        Activation::GeluNew => "NewGELUActivation",
        Activation::GeluFast => "FastGELUActivation",
        Activation::Gelu => "GELUActivation",
        Activation::QuickGelu => "QuickGELUActivation",
        Activation::Relu => "ReLU",
        Activation::Silu => "SiLU",
    }
}

/// A float as Python's `repr` writes it: the shortest digits that read back
/// to the same number, in scientific notation below `1e-4` or from `1e16`
/// (`1e-05`, `0.001`, `1.0`). The digits are those of the `f32`, which is
/// what `config.json`'s decimal was read into.
fn python_float(x: f32) -> String {
    let sci = format!("{x:e}"); // "1e-5", "1.5e-6", "1e0"
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("{:e} writes an integer exponent");
    if (-4..16).contains(&exp) {
        let fixed = format!("{x}");
        if fixed.contains('.') {
            fixed
        } else {
            format!("{fixed}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// Parameters of one block, by module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockParameters {
    /// `ln_1`: `γ` and `β`, `2C`.
    pub ln_1: usize,
    /// `attn.c_attn`: `C·3C + 3C`.
    pub attn_c_attn: usize,
    /// `attn.c_proj`: `C·C + C`.
    pub attn_c_proj: usize,
    /// `ln_2`: `2C`.
    pub ln_2: usize,
    /// `mlp.c_fc`: `C·n_inner + n_inner`.
    pub mlp_c_fc: usize,
    /// `mlp.c_proj`: `n_inner·C + C`.
    pub mlp_c_proj: usize,
}

impl BlockParameters {
    /// Count the parameters of `block` from its arrays.
    pub fn of(block: &Block) -> Self {
        let ln = |ln: &LayerNorm| ln.weight.len() + ln.bias.len();
        let conv = |c: &Conv1D| c.weight.len() + c.bias.len();
        BlockParameters {
            ln_1: ln(&block.ln_1),
            attn_c_attn: conv(&block.attn.c_attn),
            attn_c_proj: conv(&block.attn.c_proj),
            ln_2: ln(&block.ln_2),
            mlp_c_fc: conv(&block.mlp.c_fc),
            mlp_c_proj: conv(&block.mlp.c_proj),
        }
    }

    /// The attention's share: `c_attn + c_proj`.
    pub fn attn(&self) -> usize {
        self.attn_c_attn + self.attn_c_proj
    }

    /// The MLP's share: `c_fc + c_proj`.
    pub fn mlp(&self) -> usize {
        self.mlp_c_fc + self.mlp_c_proj
    }

    /// All of the block.
    pub fn total(&self) -> usize {
        self.ln_1 + self.attn() + self.ln_2 + self.mlp()
    }
}

/// Where a model's parameters are, counted from the loaded arrays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterCounts {
    /// Token embeddings `wte`, `vocab·C` (also the head when tied).
    pub wte: usize,
    /// Position embeddings `wpe`, `n_positions·C`.
    pub wpe: usize,
    /// Each block `h.{i}`.
    pub blocks: Vec<BlockParameters>,
    /// The final layer norm, `2C`.
    pub ln_f: usize,
    /// `lm_head.weight` when it is a matrix of its own; `None` when tied to
    /// `wte`, whose parameters are then counted once, under `wte`.
    pub lm_head: Option<usize>,
}

impl ParameterCounts {
    /// Count the parameters of `model`.
    pub fn of(model: &Gpt2) -> Self {
        ParameterCounts {
            wte: model.wte.len(),
            wpe: model.wpe.len(),
            blocks: model.h.iter().map(BlockParameters::of).collect(),
            ln_f: model.ln_f.weight.len() + model.ln_f.bias.len(),
            lm_head: model.lm_head.as_ref().map(|w| w.len()),
        }
    }

    /// All the parameters, the tied head counted once: PyTorch's
    /// `model.num_parameters()`, and [`Config::num_parameters`](crate::Config::num_parameters).
    pub fn total(&self) -> usize {
        self.wte
            + self.wpe
            + self
                .blocks
                .iter()
                .map(BlockParameters::total)
                .sum::<usize>()
            + self.ln_f
            + self.lm_head.unwrap_or(0)
    }
}

/// The parameter counts of `model` as an aligned table, per module and in
/// total, followed by the bytes its weights took in the checkpoint by stored
/// dtype ([`Gpt2::stored_bytes`]).
///
/// Identical blocks are folded into one group of rows, with the count of
/// one block beside that of all of them; a tied head shows as 0, its matrix
/// counted once under `wte`. The total equals
/// [`Config::num_parameters`](crate::Config::num_parameters).
pub fn parameter_table(model: &Gpt2) -> String {
    let counts = ParameterCounts::of(model);
    let total = counts.total();
    // (module, parameters in one block when the row is per block, parameters in all)
    let mut rows: Vec<(String, Option<usize>, usize)> = vec![
        ("transformer.wte".into(), None, counts.wte),
        ("transformer.wpe".into(), None, counts.wpe),
    ];
    let n = counts.blocks.len();
    let all_equal = counts.blocks.windows(2).all(|w| w[0] == w[1]);
    let mut block_rows = |label: String, b: &BlockParameters, times: usize| {
        rows.push((label, Some(b.total()), times * b.total()));
        for (name, count) in [
            ("ln_1", b.ln_1),
            ("attn.c_attn", b.attn_c_attn),
            ("attn.c_proj", b.attn_c_proj),
            ("ln_2", b.ln_2),
            ("mlp.c_fc", b.mlp_c_fc),
            ("mlp.c_proj", b.mlp_c_proj),
        ] {
            rows.push((format!("  {name}"), Some(count), times * count));
        }
    };
    if all_equal && n > 1 {
        let label = format!("transformer.h.0-{} ({n} blocks)", n - 1);
        block_rows(label, &counts.blocks[0], n);
    } else {
        for (i, b) in counts.blocks.iter().enumerate() {
            block_rows(format!("transformer.h.{i}"), b, 1);
        }
    }
    rows.push(("transformer.ln_f".into(), None, counts.ln_f));
    match counts.lm_head {
        Some(count) => rows.push(("lm_head".into(), None, count)),
        None => rows.push(("lm_head (tied: it is wte)".into(), None, 0)),
    }

    let width = rows.iter().map(|(name, ..)| name.len()).max().unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:>11}  {:>14}  {:>6}",
        "module", "per block", "parameters", "share"
    );
    for (name, each, count) in &rows {
        let each = each.map(thousands).unwrap_or_default();
        let share = 100.0 * *count as f64 / total as f64;
        let count = thousands(*count);
        let _ = writeln!(
            out,
            "{name:<width$}  {each:>11}  {count:>14}  {share:>5.1}%"
        );
    }
    let _ = writeln!(
        out,
        "{:<width$}  {:>11}  {:>14}  100.0%",
        "total (tied head counted once)",
        "",
        thousands(total)
    );

    out.push('\n');
    if model.stored_bytes.is_empty() {
        out.push_str("stored: not read from a checkpoint\n");
    } else {
        for (dtype, bytes) in &model.stored_bytes {
            let _ = writeln!(
                out,
                "stored as {dtype}: {} bytes ({})",
                thousands(*bytes),
                human_bytes(*bytes)
            );
        }
    }
    let in_memory = model.weight_bytes();
    let dtype = model
        .dtype()
        .map_or("mixed dtypes".to_string(), |d| d.to_string());
    let _ = writeln!(
        out,
        "in memory ({dtype} matrices, f32 vectors): {} bytes ({})",
        thousands(in_memory),
        human_bytes(in_memory)
    );
    out
}

/// `1234567` → `1,234,567`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Bytes in binary units: `548.1 MiB`.
fn human_bytes(n: usize) -> String {
    let mut value = n as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if value < 1024.0 || unit == "GiB" {
            return if unit == "B" {
                format!("{n} B")
            } else {
                format!("{value:.1} {unit}")
            };
        }
        value /= 1024.0;
    }
    unreachable!("the loop returns at GiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_repr() {
        assert_eq!(python_float(1e-5), "1e-05");
        assert_eq!(python_float(1e-6), "1e-06");
        assert_eq!(python_float(1.5e-6), "1.5e-06");
        assert_eq!(python_float(0.001), "0.001");
        assert_eq!(python_float(1.0), "1.0");
        assert_eq!(python_float(1e20), "1e+20");
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(124_439_808), "124,439,808");
    }
}
