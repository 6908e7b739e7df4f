//! Activation patching: which activations carry the difference between two
//! prompts, as TransformerLens's `get_act_patch_resid_pre` and
//! `get_act_patch_attn_head_out_all_pos` measure it.
//!
//! Two prompts of the same length that differ in a word the answer depends
//! on: the *clean* one (`"And they came to Pharaoh king of"`, answer
//! `" Egypt"`) and the *corrupted* one (`"... Cyrus king of"`, which makes
//! `" Persia"` the answer). The metric is the logit difference at the last
//! position, `logit(answer) − logit(wrong)`: high on the clean run, low on
//! the corrupted one. Then run the corrupted prompt again and again, each
//! time with one activation put back from the clean run ([`Intervention`]
//! replacing it), and see how much of the clean metric it restores:
//!
//! - `resid_pre[l][p]`: the residual stream entering block `l`
//!   ([`resid_pre`]) at position `p`. Where the information sits, layer by
//!   layer: at the differing word early on, at the last position late.
//! - `head_out[l][h]`: the output of head `h` of block `l` (its slice of
//!   `attn.z`, before `c_proj`) at every position. Which heads move it.
//!
//! Each patched run is one sequence of a batch ([`Gpt2::forward_steps_intervened`]
//! with one [`Intervention::in_sequence`] per sequence).

use std::fmt::Write as _;

use anyhow::{ensure, Context, Result};
use ndarray::{s, Array2, ArrayView1, Ix2, Ix3};
use serde_json::{json, Value};

use super::token_label;
use crate::intervention::{resid_pre, Intervention, Interventions};
use crate::model::{Gpt2, KvCache, Logits, SequenceStep};
use crate::tokenizer::Tokenizer;
use crate::trace::Trace;

/// The two sweeps of [`activation_patching`] and the metric of both runs.
#[derive(Clone, Debug)]
pub struct Patching {
    /// The clean prompt's tokens, as the tokenizer decodes each one alone.
    pub tokens: Vec<String>,
    /// The corrupted prompt's tokens.
    pub corrupt_tokens: Vec<String>,
    /// The token whose logit the metric adds, and the one it subtracts.
    pub answer: u32,
    /// See [`Patching::answer`].
    pub wrong: u32,
    /// The text of [`Patching::answer`] and of [`Patching::wrong`].
    pub answer_text: String,
    /// See [`Patching::answer_text`].
    pub wrong_text: String,
    /// The metric of the clean run.
    pub clean: f32,
    /// The metric of the corrupted run.
    pub corrupt: f32,
    /// `[n_layer, T]`: the corrupted run with the input of block `l` at
    /// position `p` taken from the clean run.
    pub resid_pre: Array2<f32>,
    /// `[n_layer, n_head]`: the corrupted run with head `h` of block `l`
    /// (its output before `c_proj`, at every position) taken from the clean run.
    pub head_out: Array2<f32>,
}

/// The metric: `logit(answer) − logit(wrong)` of one position's logits `[vocab]`.
pub fn logit_difference(logits: ArrayView1<f32>, answer: u32, wrong: u32) -> f32 {
    logits[answer as usize] - logits[wrong as usize]
}

/// The id of `text` when it is exactly one token, else an error saying what it is.
pub fn single_token(tokenizer: &Tokenizer, text: &str) -> Result<u32> {
    let ids = tokenizer.encode(text)?;
    match ids[..] {
        [id] => Ok(id),
        _ => {
            let pieces: Vec<String> = ids
                .iter()
                .map(|&id| tokenizer.decode(&[id]).map(|t| format!("{t:?}")))
                .collect::<Result<_>>()?;
            anyhow::bail!(
                "{text:?} is {} tokens, not one: [{}] (the metric compares the logits of single \
                 tokens; mind the leading space, \" Egypt\" is not \"Egypt\")",
                ids.len(),
                pieces.join(", ")
            )
        }
    }
}

/// Sequences patched per forward step.
const BATCH: usize = 32;

/// Patch every `resid_pre[l][p]` and every `head_out[l][h]` of the clean run
/// into the corrupted one and measure [`logit_difference`] at the last
/// position (definitions in the [module doc](self)). `clean` and `corrupt`
/// must have the same number of tokens.
///
/// ```
/// use gpt2_ndarray::inspect::patching::{activation_patching, single_token};
/// use gpt2_ndarray::{Gpt2, Tokenizer};
/// # let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/models/kjv-gpt2");
/// let (model, tokenizer) = (Gpt2::from_dir(dir)?, Tokenizer::from_dir(dir)?);
/// let clean = tokenizer.encode("And they came to Pharaoh king of")?;
/// let corrupt = tokenizer.encode("And they came to Cyrus king of")?;
/// let (answer, wrong) = (single_token(&tokenizer, " Egypt")?, single_token(&tokenizer, " Persia")?);
/// let p = activation_patching(&model, &tokenizer, &clean, &corrupt, answer, wrong)?;
/// assert!(p.clean > 5.0 && p.corrupt < 0.0); // Egypt after Pharaoh, Persia after Cyrus
/// // Block 0's input at " Pharaoh" (position 4) is all the difference there is.
/// assert!((p.resid_pre[[0, 4]] - p.clean).abs() < 1e-4);
/// # anyhow::Ok(())
/// ```
pub fn activation_patching(
    model: &Gpt2,
    tokenizer: &Tokenizer,
    clean: &[u32],
    corrupt: &[u32],
    answer: u32,
    wrong: u32,
) -> Result<Patching> {
    ensure!(
        clean.len() == corrupt.len(),
        "the clean and the corrupted prompt must have the same number of tokens, to be patched \
         position by position: the clean one has {}, the corrupted one {}",
        clean.len(),
        corrupt.len()
    );
    let cfg = &model.config;
    for (what, id) in [("answer", answer), ("wrong", wrong)] {
        ensure!(
            (id as usize) < cfg.vocab_size,
            "the {what} token {id} is out of range: the vocabulary has {} tokens",
            cfg.vocab_size
        );
    }
    let (n_layer, n_head, t) = (cfg.n_layer, cfg.n_head, clean.len());
    let metric = |logits: ArrayView1<f32>| logit_difference(logits, answer, wrong);

    // The clean run, keeping what the patches put back.
    let mut names: Vec<String> = (0..n_layer).map(resid_pre).collect();
    names.extend((0..n_layer).map(|l| format!("h.{l}.attn.z")));
    let mut trace = Trace::names(&names);
    let clean_logits = model
        .forward_traced(clean, &mut trace)
        .context("the clean run")?;
    let corrupt_logits = model.forward(corrupt).context("the corrupted run")?;
    let mut take = |name: &str| {
        trace
            .tensors
            .remove(name)
            .unwrap_or_else(|| panic!("the forward pass did not record {name}"))
    };

    // One intervention per patched run: first every (l, p), then every (l, h).
    let mut patches = Vec::with_capacity(n_layer * (t + n_head));
    let mut z = Vec::with_capacity(n_layer);
    for l in 0..n_layer {
        let x = take(&resid_pre(l)).into_dimensionality::<Ix2>()?; // [T, C]
        for p in 0..t {
            patches.push(Intervention::replace(&resid_pre(l), x.row(p).to_owned()).at([p]));
        }
        z.push(take(&format!("h.{l}.attn.z")).into_dimensionality::<Ix3>()?); // [n_head, T, d]
    }
    for (l, z) in z.iter().enumerate() {
        for h in 0..n_head {
            let head = z.slice(s![h..h + 1, .., ..]).to_owned(); // [1, T, d]
            let site = format!("h.{l}.attn.z");
            patches.push(Intervention::replace(&site, head).at(0..t).heads([h]));
        }
    }

    let mut metrics = Vec::with_capacity(patches.len());
    let mut patches = patches.into_iter().peekable();
    while patches.peek().is_some() {
        let chunk: Interventions = patches
            .by_ref()
            .take(BATCH)
            .enumerate()
            .map(|(b, patch)| patch.in_sequence(b))
            .collect();
        let mut caches: Vec<KvCache> = (0..chunk.len())
            .map(|_| KvCache::one_pass(n_layer))
            .collect();
        let mut steps: Vec<SequenceStep<'_>> = caches
            .iter_mut()
            .map(|cache| SequenceStep {
                ids: corrupt,
                mask: None,
                cache,
            })
            .collect();
        let logits = model.forward_steps_intervened(&mut steps, Logits::Last, &chunk)?; // [B, vocab]
        metrics.extend(logits.rows().into_iter().map(metric));
    }
    let (resid, heads) = metrics.split_at(n_layer * t);
    let text = |ids: &[u32]| -> Result<Vec<String>> {
        ids.iter().map(|&id| tokenizer.decode(&[id])).collect()
    };
    Ok(Patching {
        tokens: text(clean)?,
        corrupt_tokens: text(corrupt)?,
        answer,
        wrong,
        answer_text: tokenizer.decode(&[answer])?,
        wrong_text: tokenizer.decode(&[wrong])?,
        clean: metric(clean_logits.row(t - 1)),
        corrupt: metric(corrupt_logits.row(t - 1)),
        resid_pre: Array2::from_shape_vec((n_layer, t), resid.to_vec())?,
        head_out: Array2::from_shape_vec((n_layer, n_head), heads.to_vec())?,
    })
}

impl Patching {
    /// How much of the clean metric a patched run restores:
    /// `(m − corrupt) / (clean − corrupt)`, 0 = the corrupted run's, 1 = the clean run's.
    pub fn restored(&self, m: f32) -> f32 {
        (m - self.corrupt) / (self.clean - self.corrupt)
    }

    /// `{"clean": x, "corrupt": x, "resid_pre": [[...]], "head_out": [[...]], "tokens": [...]}`.
    pub fn to_json(&self) -> Value {
        let rows = |a: &Array2<f32>| -> Vec<Vec<f32>> {
            a.rows().into_iter().map(|r| r.to_vec()).collect()
        };
        json!({
            "clean": self.clean,
            "corrupt": self.corrupt,
            "resid_pre": rows(&self.resid_pre),
            "head_out": rows(&self.head_out),
            "tokens": self.tokens,
        })
    }

    /// Both sweeps as tables of the metric, for a terminal.
    pub fn report(&self) -> String {
        let (answer, wrong) = (&self.answer_text, &self.wrong_text);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "metric: logit({answer:?}) − logit({wrong:?}) at the last position\n  clean   {:>8.4}\n  corrupt {:>8.4}",
            self.clean, self.corrupt
        );
        let _ = writeln!(out, "\ntokens (clean / corrupted):");
        for (p, (a, b)) in self.tokens.iter().zip(&self.corrupt_tokens).enumerate() {
            let mark = if a == b { "" } else { "   <- differs" };
            let _ = writeln!(out, "  {p:>4}  {a:?} / {b:?}{mark}");
        }
        let _ = writeln!(
            out,
            "\nresid_pre[l][p]: the corrupted run with block l's input at position p from the clean run"
        );
        let _ = write!(out, "  {:<8}", "block");
        for token in &self.tokens {
            let _ = write!(out, " {:>10}", token_label(token, 10));
        }
        out.push('\n');
        for (l, row) in self.resid_pre.rows().into_iter().enumerate() {
            let _ = write!(out, "  {:<8}", format!("h.{l}"));
            for m in row {
                let _ = write!(out, " {m:>10.4}");
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "\nhead_out[l][h]: the corrupted run with head h of block l (all positions) from the clean run"
        );
        let _ = write!(out, "  {:<8}", "block");
        for h in 0..self.head_out.ncols() {
            let _ = write!(out, " {:>10}", format!("head {h}"));
        }
        out.push('\n');
        for (l, row) in self.head_out.rows().into_iter().enumerate() {
            let _ = write!(out, "  {:<8}", format!("h.{l}"));
            for m in row {
                let _ = write!(out, " {m:>10.4}");
            }
            out.push('\n');
        }
        out
    }
}
