//! Perplexity of a text under a model, over sliding windows.
//!
//! A text longer than the context is scored in windows of at most
//! `n_positions` tokens that start every `stride` tokens, as the transformers
//! documentation computes it ("Perplexity of fixed-length models"): each
//! window re-reads up to `n_positions - stride` tokens of context and scores
//! only the tokens not scored by an earlier window. A token is scored by the
//! model's prediction at the position before it, so the very first token of
//! the text is never scored.
//!
//! `perplexity = exp(Σ NLL / tokens scored)`, with `NLL = −log softmax(logits)[target]`.

use anyhow::{ensure, Result};
use ndarray::ArrayView1;

use crate::model::Gpt2;

/// The summed negative log-likelihood and how many tokens it covers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Perplexity {
    /// `Σ −ln p(token | context)` over the scored tokens, in nats.
    pub nll_sum: f64,
    /// Number of tokens scored.
    pub tokens: usize,
}

impl Perplexity {
    /// Mean negative log-likelihood per token (the cross-entropy loss), in nats.
    pub fn mean_nll(&self) -> f64 {
        self.nll_sum / self.tokens as f64
    }

    /// `exp(mean NLL)`.
    pub fn perplexity(&self) -> f64 {
        self.mean_nll().exp()
    }
}

/// `−ln softmax(logits)[target]`, computed stably in f64: `logsumexp(logits) − logits[target]`.
pub fn token_nll(logits: ArrayView1<f32>, target: u32) -> f64 {
    let max = logits.fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln() - logits[target as usize] as f64
}

/// Score `ids` in windows of `n_positions` tokens every `stride` tokens.
/// `progress(windows_done, windows_total)` is called after each window.
pub fn perplexity(
    model: &Gpt2,
    ids: &[u32],
    stride: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Perplexity> {
    let window = model.config.n_positions;
    ensure!(
        ids.len() >= 2,
        "perplexity needs at least 2 tokens, the text has {}",
        ids.len()
    );
    ensure!(
        (1..=window).contains(&stride),
        "stride {stride} must be between 1 and n_positions ({window})"
    );
    let total = windows(ids.len(), window, stride).count();
    let mut result = Perplexity::default();
    let mut scored_until = 1; // the first token has no context
    for (done, (begin, end)) in windows(ids.len(), window, stride).enumerate() {
        let logits = model.forward(&ids[begin..end])?; // [end - begin, vocab]
                                                       // Position p of the window predicts token begin + p + 1.
        let first = scored_until.max(begin + 1);
        for (target, &id) in ids.iter().enumerate().take(end).skip(first) {
            result.nll_sum += token_nll(logits.row(target - begin - 1), id);
            result.tokens += 1;
        }
        scored_until = end;
        progress(done + 1, total);
    }
    Ok(result)
}

/// The `(begin, end)` of each window: starts every `stride` tokens, at most
/// `window` long, stopping at the first window that reaches the end.
fn windows(len: usize, window: usize, stride: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut begin = 0;
    let mut finished = false;
    std::iter::from_fn(move || {
        if finished {
            return None;
        }
        let end = (begin + window).min(len);
        finished = end == len;
        let w = (begin, end);
        begin += stride;
        Some(w)
    })
}
