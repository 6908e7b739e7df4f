//! What keeping the weights in half precision changes: the numbers behind
//! the error budget of `docs/half-precision.md`.
//!
//! A model whose weights are rounded to `f16` (10 mantissa bits, relative
//! rounding error ≤ 2⁻¹¹ ≈ 4.9e-4) or `bf16` (7 bits, ≤ 2⁻⁸ ≈ 3.9e-3)
//! computes with slightly different weights; the arithmetic itself stays
//! `f32`. These functions compare the model with its rounded twin
//! ([`Gpt2::to_dtype`]) on the same tokens: how far the logits move, whether
//! the most likely next token is the same, how long a greedy continuation
//! stays identical. Perplexity changes come from [`crate::perplexity`].
//!
//! The same questions for a key/value cache kept in half precision
//! ([`KvCache::with_dtype`]): [`forward_with_cache`] gives the logits of the
//! model whose keys and values are rounded as they are cached, and
//! [`greedy_agreement_with_cache`] compares its greedy continuations with the
//! `f32` cache's.
//!
//! ```
//! use gpt2_ndarray::{precision, Dtype, Gpt2};
//! # let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/model");
//! let model = Gpt2::from_dir(&dir)?;
//! let half = model.to_dtype(Dtype::BF16);
//! let ids = [464, 3290, 318, 257];
//! let a = precision::compare_logits(model.forward(&ids)?.view(), half.forward(&ids)?.view());
//! assert_eq!(a.positions, 4);
//! assert!(a.max_abs_diff < 0.1);
//! # Ok::<(), anyhow::Error>(())
//! ```

use anyhow::{ensure, Result};
use ndarray::{Array2, ArrayView1, ArrayView2, Axis};

use crate::checkpoint::Dtype;
use crate::model::{Gpt2, KvCache, Logits};
use crate::trace::Trace;

/// How two models' logits `[T, vocab]` on the same tokens compare.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogitAgreement {
    /// Positions compared (`T`).
    pub positions: usize,
    /// `max |a − b|` over every logit.
    pub max_abs_diff: f32,
    /// Mean `|a − b|` over every logit.
    pub mean_abs_diff: f64,
    /// Positions whose most likely next token (the argmax) is the same.
    pub top1_agree: usize,
}

impl LogitAgreement {
    /// `top1_agree / positions`.
    pub fn top1_rate(&self) -> f64 {
        self.top1_agree as f64 / self.positions.max(1) as f64
    }
}

/// Compare `other` with `reference`, both `[T, vocab]`.
///
/// # Panics
///
/// If the shapes differ.
pub fn compare_logits(reference: ArrayView2<f32>, other: ArrayView2<f32>) -> LogitAgreement {
    assert_eq!(reference.dim(), other.dim(), "logits of different shapes");
    let mut max_abs_diff = 0.0f32;
    let mut sum = 0.0f64;
    ndarray::Zip::from(&reference)
        .and(&other)
        .for_each(|&a, &b| {
            let d = (a - b).abs();
            max_abs_diff = max_abs_diff.max(d);
            sum += f64::from(d);
        });
    let top1_agree = reference
        .axis_iter(Axis(0))
        .zip(other.axis_iter(Axis(0)))
        .filter(|(a, b)| argmax(*a) == argmax(*b))
        .count();
    LogitAgreement {
        positions: reference.nrows(),
        max_abs_diff,
        mean_abs_diff: sum / reference.len().max(1) as f64,
        top1_agree,
    }
}

/// The index of the largest value (the first one on ties).
pub fn argmax(x: ArrayView1<f32>) -> usize {
    x.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |(i, m), (j, &v)| {
                if v > m {
                    (j, v)
                } else {
                    (i, m)
                }
            },
        )
        .0
}

/// Logits `[T, vocab]` of `ids` in one pass whose keys and values are kept
/// as `kv_cache` and attended to as kept: for a half cache, what every step
/// of a generation with that cache computes (each key and value rounded
/// once, as it is cached). Errors as [`Gpt2::forward_step`], and for an
/// `f64` cache.
pub fn forward_with_cache(model: &Gpt2, ids: &[u32], kv_cache: Dtype) -> Result<Array2<f32>> {
    let mut cache = KvCache::one_pass(model.config.n_layer).with_dtype(kv_cache)?;
    model.forward_step(ids, None, &mut cache, Logits::All, &mut Trace::off())
}

/// The `n` tokens greedy decoding appends to `prompt` (the argmax at each
/// step, through the cache), without stopping at `<|endoftext|>`.
pub fn greedy_continuation(model: &Gpt2, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
    greedy_continuation_with_cache(model, prompt, n, Dtype::F32)
}

/// [`greedy_continuation`] with the key/value cache kept as `kv_cache`.
pub fn greedy_continuation_with_cache(
    model: &Gpt2,
    prompt: &[u32],
    n: usize,
    kv_cache: Dtype,
) -> Result<Vec<u32>> {
    ensure!(!prompt.is_empty(), "greedy continuation of an empty prompt");
    let mut cache = KvCache::new(model.config.n_layer).with_dtype(kv_cache)?;
    let mut out = Vec::with_capacity(n);
    let mut step: Vec<u32> = prompt.to_vec();
    for _ in 0..n {
        let logits =
            model.forward_step(&step, None, &mut cache, Logits::Last, &mut Trace::off())?;
        let next = argmax(logits.row(0)) as u32;
        out.push(next);
        step = vec![next];
    }
    Ok(out)
}

/// Greedy continuations of `new_tokens` tokens by both models after each of
/// `prompts` prompts of `prompt_len` tokens, taken from `ids` at evenly
/// spaced offsets (`i · (len − prompt_len) / prompts`): returns the tokens
/// the two continuations share before they first differ, summed over the
/// prompts, and the tokens generated per model (`prompts · new_tokens`).
pub fn greedy_agreement(
    reference: &Gpt2,
    other: &Gpt2,
    ids: &[u32],
    prompts: usize,
    prompt_len: usize,
    new_tokens: usize,
) -> Result<(usize, usize)> {
    agreement(ids, prompts, prompt_len, new_tokens, |prompt| {
        Ok((
            greedy_continuation(reference, prompt, new_tokens)?,
            greedy_continuation(other, prompt, new_tokens)?,
        ))
    })
}

/// [`greedy_agreement`] of `model` with an `f32` cache and with one kept as
/// `kv_cache`.
pub fn greedy_agreement_with_cache(
    model: &Gpt2,
    kv_cache: Dtype,
    ids: &[u32],
    prompts: usize,
    prompt_len: usize,
    new_tokens: usize,
) -> Result<(usize, usize)> {
    agreement(ids, prompts, prompt_len, new_tokens, |prompt| {
        Ok((
            greedy_continuation(model, prompt, new_tokens)?,
            greedy_continuation_with_cache(model, prompt, new_tokens, kv_cache)?,
        ))
    })
}

/// The prompts of [`greedy_agreement`], each given to `continuations` (the
/// two continuations to compare).
fn agreement(
    ids: &[u32],
    prompts: usize,
    prompt_len: usize,
    new_tokens: usize,
    continuations: impl Fn(&[u32]) -> Result<(Vec<u32>, Vec<u32>)>,
) -> Result<(usize, usize)> {
    ensure!(
        prompt_len > 0 && ids.len() >= prompt_len,
        "need at least {prompt_len} ids for a prompt, have {}",
        ids.len()
    );
    let mut same = 0;
    for i in 0..prompts {
        let start = i * (ids.len() - prompt_len) / prompts.max(1);
        let (a, b) = continuations(&ids[start..start + prompt_len])?;
        same += common_prefix(&a, &b);
    }
    Ok((same, prompts * new_tokens))
}

/// How many leading tokens `a` and `b` share.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
