//! See inside the model: its architecture, and what it does with one prompt.
//!
//! - [`architecture`] prints the loaded model as PyTorch's
//!   `print(GPT2LMHeadModel)` does, and [`parameter_table`] counts its
//!   parameters per module (`cargo run --release --example architecture`).
//! - [`inspect`] runs a prompt once with a [`Trace`] and measures, for every
//!   layer, the residual stream, the attention heads and the **logit lens**;
//!   [`Inspection::report`] prints it as tables
//!   (`cargo run --release --example inspect -- "prompt"`), and the `plot`
//!   module (cargo feature `plot`, on by default) draws it as PNG figures.
//! - [`patching`] finds which activations carry the difference between two
//!   prompts, by patching them from one run into the other
//!   (`cargo run --release --example patch`).
//!
//! ## What is measured
//!
//! The **residual stream** is the `[T, C]` array `x` that flows past the
//! blocks (the diagram on the [crate page](crate)). There are `n_layer + 1`
//! snapshots of it, named as in the [`Trace`]: `embed` (`wte[ids] + wpe`,
//! entering block 0) and `h.{i}` (leaving block `i`). For each, the L2 norm
//! `‖x_t‖₂` of every position `t`.
//!
//! The **logit lens** asks each snapshot what it would predict if the model
//! stopped there: apply the model's own final layer norm and head,
//! `softmax(layer_norm(x, ln_f) · Wᵀ)`, `W` = `wte` (tied) or `lm_head`
//! ([`logit_lens`]). For the last snapshot `h.{n_layer-1}` this *is* the
//! model's output; earlier ones show the prediction forming layer by layer.
//!
//! The **attention** of head `h` in block `i` is its `[T, T]` matrix of
//! probabilities `p[q, k]` (query position `q` attends to key position
//! `k ≤ q`; rows sum to 1), the trace's `h.{i}.attn.probs`. Per head:
//!
//! - **entropy**: the mean over query positions `q` of the row entropy
//!   `H_q = −Σ_k p[q,k]·ln p[q,k]` in nats ([`entropy`]). 0 means every query
//!   looks at one key; the largest possible `H_q` is `ln(q+1)` (uniform over
//!   the `q+1` visible keys), so row 0 always contributes 0.
//! - **top key**: the key the *last* query attends to most, `argmax_k p[T−1, k]`,
//!   and its weight. The last position is the one whose logits predict the
//!   next token, so this is where that prediction looks.

use std::fmt::Write as _;

use anyhow::{ensure, Result};
use ndarray::{s, Array1, Array2, Array3, ArrayView1, ArrayView2, Axis, Ix2, Ix3};
use rayon::prelude::*;

use crate::kernels::{layer_norm, softmax_inplace};
use crate::model::Gpt2;
use crate::tokenizer::Tokenizer;
use crate::trace::Trace;

mod architecture;
pub mod induction;
pub mod patching;
#[cfg(feature = "plot")]
pub mod plot;

pub use architecture::{architecture, parameter_table, BlockParameters, ParameterCounts};

/// Everything [`inspect`] measured for one prompt.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// The prompt's token ids, `[T]`.
    pub ids: Vec<u32>,
    /// Each token's text, as the tokenizer decodes it alone.
    pub tokens: Vec<String>,
    /// How many predictions each lens keeps per position.
    pub top_k: usize,
    /// The `n_layer + 1` snapshots of the residual stream, in order: `embed`,
    /// `h.0`, ..., `h.{n_layer-1}`.
    pub layers: Vec<LayerLens>,
    /// The attention of each block `h.{i}`, in order.
    pub attention: Vec<BlockAttention>,
}

/// One snapshot of the residual stream and its logit lens.
#[derive(Clone, Debug)]
pub struct LayerLens {
    /// The trace name of the snapshot: `embed` or `h.{i}`.
    pub name: String,
    /// `‖x_t‖₂` of every position, `[T]`.
    pub residual_norm: Array1<f32>,
    /// The lens's `top_k` most probable next tokens at every position,
    /// `[T][top_k]`, most probable first.
    pub top: Vec<Vec<Prediction>>,
}

/// A token and the probability a lens gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Token id.
    pub id: u32,
    /// Its text.
    pub text: String,
    /// Its probability.
    pub prob: f32,
}

/// The attention of one block.
#[derive(Clone, Debug)]
pub struct BlockAttention {
    /// Attention probabilities `[n_head, T, T]` (`h.{i}.attn.probs`).
    pub probs: Array3<f32>,
    /// The summary of each head.
    pub heads: Vec<HeadSummary>,
}

/// One attention head in numbers (definitions in the [module doc](self)).
#[derive(Clone, Debug, PartialEq)]
pub struct HeadSummary {
    /// Mean over query positions of the row entropy, in nats.
    pub entropy: f32,
    /// The entropy of each query's row, `[T]`.
    pub row_entropy: Array1<f32>,
    /// The key position the last query attends to most.
    pub top_key: usize,
    /// The weight of that key.
    pub top_weight: f32,
}

/// Run `ids` through `model` once and measure every layer: residual norms,
/// attention summaries, and the logit lens's `top_k` at every position.
///
/// The forward pass is the model's own, [`Gpt2::forward_traced`]; this
/// function only reads the [`Trace`] it fills.
///
/// ```
/// use gpt2_ndarray::{inspect::inspect, Gpt2, Tokenizer};
/// # let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/model");
/// let (model, tokenizer) = (Gpt2::from_dir(dir)?, Tokenizer::from_dir(dir)?);
/// let ids = tokenizer.encode("The capital of France is")?;
/// let seen = inspect(&model, &tokenizer, &ids, 3)?;
/// assert_eq!(seen.layers.len(), model.config.n_layer + 1); // embed, h.0, h.1, h.2
/// assert_eq!(seen.attention[0].probs.dim(), (4, ids.len(), ids.len()));
/// println!("{}", seen.report(false));
/// # anyhow::Ok(())
/// ```
pub fn inspect(
    model: &Gpt2,
    tokenizer: &Tokenizer,
    ids: &[u32],
    top_k: usize,
) -> Result<Inspection> {
    ensure!(top_k > 0, "top_k must be at least 1");
    let n_layer = model.config.n_layer;
    // What to record: the residual stream entering the blocks and leaving each
    // one, and every block's attention probabilities.
    let mut names = vec!["embed".to_owned()];
    for i in 0..n_layer {
        names.extend([format!("h.{i}"), format!("h.{i}.attn.probs")]);
    }
    let mut trace = Trace::names(&names);
    model.forward_traced(ids, &mut trace)?;
    let mut recorded = std::mem::take(&mut trace.tensors);
    let mut take = |name: &str| {
        recorded
            .remove(name)
            .unwrap_or_else(|| panic!("the forward pass did not record {name}"))
    };

    let mut residuals = vec![("embed".to_owned(), matrix(take("embed")))];
    let mut attention = Vec::with_capacity(n_layer);
    for i in 0..n_layer {
        residuals.push((format!("h.{i}"), matrix(take(&format!("h.{i}")))));
        let probs = take(&format!("h.{i}.attn.probs"))
            .into_dimensionality::<Ix3>()
            .expect("attn.probs is [n_head, T, T]");
        let heads = probs.outer_iter().map(summarize_head).collect();
        attention.push(BlockAttention { probs, heads });
    }

    let text = |id: u32| tokenizer.decode(&[id]);
    let layers = residuals
        .iter()
        .map(|(name, x)| {
            let probs = lens_probs(model, x.view()); // [T, vocab]
            let top = probs
                .axis_iter(Axis(0))
                .into_par_iter()
                .map(|row| {
                    top_tokens(row, top_k)
                        .into_iter()
                        .map(|(id, prob)| {
                            let text = text(id)?;
                            Ok(Prediction { id, text, prob })
                        })
                        .collect::<Result<Vec<_>>>()
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(LayerLens {
                name: name.clone(),
                residual_norm: x.map_axis(Axis(1), |row| row.dot(&row).sqrt()),
                top,
            })
        })
        .collect::<Result<Vec<_>>>()?;

    Ok(Inspection {
        ids: ids.to_vec(),
        tokens: ids.iter().map(|&id| text(id)).collect::<Result<_>>()?,
        top_k,
        layers,
        attention,
    })
}

fn matrix(x: ndarray::ArrayD<f32>) -> Array2<f32> {
    x.into_dimensionality::<Ix2>()
        .expect("a residual snapshot is [T, C]")
}

/// The logit lens of one residual snapshot `x: [T, C]`: the logits `[T, vocab]`
/// the model would output if its blocks stopped at `x`,
/// `layer_norm(x, ln_f) · Wᵀ` with `W` = `wte` (tied) or `lm_head`, exactly
/// as the model's own head computes them.
pub fn logit_lens(model: &Gpt2, x: ArrayView2<f32>) -> Array2<f32> {
    model.head(layer_norm(x, &model.ln_f).view()) // [T, C] -> [T, vocab]
}

/// `softmax` of each row of the [`logit_lens`].
fn lens_probs(model: &Gpt2, x: ArrayView2<f32>) -> Array2<f32> {
    let mut probs = logit_lens(model, x);
    probs.rows_mut().into_iter().for_each(softmax_inplace);
    probs
}

/// The `k` largest entries of `x` as `(index, value)`, largest first (ties:
/// the lower index first).
pub fn top_tokens(x: ArrayView1<f32>, k: usize) -> Vec<(u32, f32)> {
    let order = |&a: &usize, &b: &usize| x[b].total_cmp(&x[a]).then(a.cmp(&b));
    let mut idx: Vec<usize> = (0..x.len()).collect();
    let k = k.min(idx.len());
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, order);
    }
    idx.truncate(k);
    idx.sort_by(order);
    idx.into_iter().map(|i| (i as u32, x[i])).collect()
}

/// Entropy of a probability vector in nats: `H(p) = −Σᵢ pᵢ·ln pᵢ`, with
/// `0·ln 0 = 0` (masked keys contribute nothing).
///
/// ```
/// use ndarray::{array, Array1};
/// use gpt2_ndarray::inspect::entropy;
/// assert_eq!(entropy(array![1.0, 0.0, 0.0].view()), 0.0); // certain: no uncertainty
/// let uniform = Array1::from_elem(4, 0.25);
/// assert!((entropy(uniform.view()) - 4f32.ln()).abs() < 1e-6); // uniform over 4: ln 4
/// // torch.distributions.Categorical(probs=torch.tensor([0.7, 0.2, 0.1])).entropy() = 0.8018185
/// assert!((entropy(array![0.7, 0.2, 0.1].view()) - 0.801_818_5).abs() < 1e-6);
/// ```
pub fn entropy(p: ArrayView1<f32>) -> f32 {
    -p.iter()
        .filter(|&&v| v > 0.0)
        .map(|&v| v * v.ln())
        .sum::<f32>()
}

/// Entropies, mean entropy and the last query's top key of one head's `[T, T]` map.
fn summarize_head(p: ArrayView2<f32>) -> HeadSummary {
    let row_entropy: Array1<f32> = p.rows().into_iter().map(entropy).collect();
    let last = p.row(p.nrows() - 1);
    let (top_key, top_weight) = top_tokens(last, 1)[0];
    HeadSummary {
        entropy: row_entropy.mean().unwrap_or(0.0),
        row_entropy,
        top_key: top_key as usize,
        top_weight,
    }
}

/// A token's text for a table or a figure: control characters escaped
/// (`\n`), spaces shown as `·` so that `" the"` and `"the"` differ, and cut
/// to `max` characters (the last one `…`).
///
/// ```
/// use gpt2_ndarray::inspect::token_label;
/// assert_eq!(token_label(" the", 12), "·the");
/// assert_eq!(token_label("\n", 12), "\\n");
/// assert_eq!(token_label("\"", 12), "\"");
/// assert_eq!(token_label(" Jerusalem", 6), "·Jeru…");
/// ```
pub fn token_label(text: &str, max: usize) -> String {
    let mut shown = String::new();
    for c in text.chars() {
        match c {
            ' ' => shown.push('·'),
            '\n' => shown.push_str("\\n"),
            '\t' => shown.push_str("\\t"),
            '\r' => shown.push_str("\\r"),
            c if c.is_control() => shown.extend(c.escape_unicode()),
            c => shown.push(c),
        }
    }
    if shown.chars().count() <= max {
        return shown;
    }
    let mut cut: String = shown.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

impl Inspection {
    /// The number of positions `T`.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the prompt is empty (never, for an inspection that ran).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The measurements as aligned tables, for a terminal: the tokens, the
    /// residual norms (positions × layers), the attention entropies and top
    /// keys (layers × heads), and the logit lens of the last position (layers
    /// × top-k). With `all_positions`, also the lens's top token at every
    /// position (layers × positions).
    pub fn report(&self, all_positions: bool) -> String {
        let mut out = String::new();
        let t = self.len();
        let names: Vec<&str> = self.layers.iter().map(|l| l.name.as_str()).collect();
        let name_w = names.iter().map(|n| n.len()).max().unwrap_or(5).max(5);

        let _ = writeln!(out, "tokens ({t}):");
        for (pos, (id, text)) in self.ids.iter().zip(&self.tokens).enumerate() {
            let _ = writeln!(out, "  {pos:>4}  {id:>6}  {text:?}");
        }

        let _ = writeln!(
            out,
            "\nresidual stream: L2 norm of each position (embed = wte + wpe; h.i = leaving block i)"
        );
        let _ = write!(out, "  {:>4}  {:<12}", "pos", "token");
        for name in &names {
            let _ = write!(out, " {name:>9}");
        }
        out.push('\n');
        for pos in 0..t {
            let _ = write!(
                out,
                "  {pos:>4}  {:<12}",
                token_label(&self.tokens[pos], 12)
            );
            for layer in &self.layers {
                let _ = write!(out, " {:>9.3}", layer.residual_norm[pos]);
            }
            out.push('\n');
        }

        let n_head = self.attention.first().map_or(0, |a| a.heads.len());
        let _ = writeln!(
            out,
            "\nattention entropy, nats (mean over query positions of −Σ p·ln p; \
             0 = one key, ln {t} = {:.3} = uniform over all {t} keys)",
            (t as f32).ln()
        );
        let _ = write!(out, "  {:<name_w$}", "block");
        for h in 0..n_head {
            let _ = write!(out, " {:>7}", format!("head {h}"));
        }
        out.push('\n');
        for (i, block) in self.attention.iter().enumerate() {
            let _ = write!(out, "  {:<name_w$}", format!("h.{i}"));
            for head in &block.heads {
                let _ = write!(out, " {:>7.3}", head.entropy);
            }
            out.push('\n');
        }

        let _ = writeln!(
            out,
            "\nmost attended key of the last query ({:?} at position {}): position:weight",
            self.tokens.last().map_or("", String::as_str),
            t.saturating_sub(1)
        );
        let _ = write!(out, "  {:<name_w$}", "block");
        for h in 0..n_head {
            let _ = write!(out, " {:>9}", format!("head {h}"));
        }
        out.push('\n');
        for (i, block) in self.attention.iter().enumerate() {
            let _ = write!(out, "  {:<name_w$}", format!("h.{i}"));
            for head in &block.heads {
                let _ = write!(
                    out,
                    " {:>9}",
                    format!("{}:{:.2}", head.top_key, head.top_weight)
                );
            }
            out.push('\n');
        }

        let _ = writeln!(
            out,
            "\nlogit lens at the last position: softmax(ln_f(x) · wteᵀ) of each layer's residual"
        );
        let _ = write!(out, "  {:<name_w$}", "layer");
        for rank in 1..=self.top_k {
            let _ = write!(out, "  {:<22}", format!("top {rank}"));
        }
        out.push('\n');
        for layer in &self.layers {
            let _ = write!(out, "  {:<name_w$}", layer.name);
            for p in layer.top.last().into_iter().flatten() {
                let cell = format!("{:<14} {:>5.1}%", token_label(&p.text, 14), 100.0 * p.prob);
                let _ = write!(out, "  {cell:<22}");
            }
            out.push('\n');
        }

        if all_positions {
            let _ = writeln!(
                out,
                "\nlogit lens, top token at every position (the prediction for the token after it)"
            );
            let _ = write!(out, "  {:<name_w$}", "layer");
            for text in &self.tokens {
                let _ = write!(out, "  {:<12}", token_label(text, 12));
            }
            out.push('\n');
            for layer in &self.layers {
                let _ = write!(out, "  {:<name_w$}", layer.name);
                for top in &layer.top {
                    let _ = write!(out, "  {:<12}", token_label(&top[0].text, 12));
                }
                out.push('\n');
            }
        }
        // Cells are padded to their column's width: drop the padding at line ends.
        let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
        lines.join("\n") + "\n"
    }

    /// The attention probabilities of block `layer`, head `head`: `[T, T]`.
    pub fn attention_map(&self, layer: usize, head: usize) -> ArrayView2<'_, f32> {
        self.attention[layer].probs.slice(s![head, .., ..])
    }
}
