//! Text generation: the key/value-cached decoding loop, the sampling filters
//! of transformers' `generate`, stop rules, and a streaming decoder that never
//! prints half a UTF-8 character.
//!
//! One step: run the new token(s) through [`Gpt2::forward_step`] with the
//! cache, take the last position's logits, apply the repetition penalty, then
//! (when sampling) temperature → top-k → top-p — the order transformers
//! applies them — and pick the next token: the argmax, or a draw from the
//! softmax with a seeded generator.

use anyhow::{ensure, Result};
use ndarray::{Array1, Array2, ArrayView1, ArrayViewMut1};
use rayon::prelude::*;

use crate::checkpoint::Dtype;
use crate::intervention::Interventions;
use crate::kernels::fastmath::max_lanes;
use crate::kernels::softmax;
use crate::model::{Gpt2, KvCache, Logits, SequenceStep};
use crate::tokenizer::Tokenizer;
use crate::trace::Trace;

/// The interventions of a generation that has none.
static NO_INTERVENTIONS: Interventions = Interventions::none();

/// How to generate. The defaults are transformers' (`do_sample = false`:
/// greedy), with at most 20 new tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// How many tokens to add at most (≥ 1).
    pub max_new_tokens: usize,
    /// Sample from the filtered distribution instead of taking the argmax.
    pub do_sample: bool,
    /// Divide the logits by this (> 0) before sampling; below 1 sharpens.
    pub temperature: f32,
    /// Keep only the `k` (≥ 1) most likely tokens when sampling.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p` ∈ (0, 1].
    pub top_p: Option<f32>,
    /// Penalise tokens already in the sequence (> 0; 1 = none), greedy or not.
    pub repetition_penalty: Option<f32>,
    /// Seed of the sampler: the same seed gives the same text.
    pub seed: u64,
    /// Stop after generating `<|endoftext|>`.
    pub stop_at_end_of_text: bool,
    /// Stop once the generated text contains one of these.
    pub stop_strings: Vec<String>,
    /// The dtype the key/value cache keeps (`f32`, `f16` or `bf16`): half
    /// precision rounds each key and value as it is stored, and halves the
    /// cache's memory and what a decoding step reads of it ([`KvCache`]).
    pub kv_cache: Dtype,
    /// Run a prompt through the model at most this many tokens at a time
    /// (`None`, the default: all at once; a batch's prompts share the
    /// number): each chunk adds its keys and values to the cache before the
    /// next, so the activations take the memory of a chunk, not of the whole
    /// prompt. It trades speed for memory: GPT-2 small, an 896-token prompt,
    /// `Some(256)`: the process's peak about 14 MB lower (heap 61.0 instead of
    /// 74.7 MiB with f16 weights and cache), the prefill 2–14% slower (each
    /// chunk reads the weights again; `docs/bench.md`). The logits are those of one
    /// pass up to rounding (products of another shape); prompts of a
    /// generation with interventions always run in one pass.
    pub prefill_chunk: Option<usize>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 20,
            do_sample: false,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            repetition_penalty: None,
            seed: 0,
            stop_at_end_of_text: true,
            stop_strings: Vec::new(),
            kv_cache: Dtype::F32,
            prefill_chunk: None,
        }
    }
}

impl GenerateOptions {
    /// Reject options that have no meaning, saying which and why.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.max_new_tokens >= 1,
            "max_new_tokens is 0: nothing to generate"
        );
        ensure!(
            self.temperature.is_finite() && self.temperature > 0.0,
            "temperature is {}, it must be > 0 (for greedy decoding set do_sample = false)",
            self.temperature
        );
        if let Some(k) = self.top_k {
            ensure!(k >= 1, "top_k is 0: at least one token must stay");
        }
        if let Some(p) = self.top_p {
            ensure!(p > 0.0 && p <= 1.0, "top_p is {p}, it must be in (0, 1]");
        }
        if let Some(r) = self.repetition_penalty {
            ensure!(
                r.is_finite() && r > 0.0,
                "repetition_penalty is {r}, it must be > 0"
            );
        }
        ensure!(
            self.stop_strings.iter().all(|s| !s.is_empty()),
            "a stop string is empty"
        );
        ensure!(
            self.kv_cache != Dtype::F64,
            "kv_cache is f64: the cache keeps f32, f16 or bf16"
        );
        ensure!(
            self.prefill_chunk != Some(0),
            "prefill_chunk is 0: at least one prompt token must run at a time"
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The filters, each the twin of a transformers logits processor.
// ---------------------------------------------------------------------------

/// `RepetitionPenaltyLogitsProcessor`: for each distinct token already in
/// `context`, a positive logit is divided by `penalty`, a negative one multiplied.
pub fn apply_repetition_penalty(mut logits: ArrayViewMut1<f32>, context: &[u32], penalty: f32) {
    let mut seen = vec![false; logits.len()];
    for &id in context {
        let i = id as usize;
        if i < logits.len() && !std::mem::replace(&mut seen[i], true) {
            let l = &mut logits[i];
            *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
        }
    }
}

/// `TemperatureLogitsWarper`: `logits / temperature`.
pub fn apply_temperature(mut logits: ArrayViewMut1<f32>, temperature: f32) {
    logits.mapv_inplace(|l| l / temperature);
}

/// `TopKLogitsWarper`: every logit below the `k`-th largest becomes `-inf`
/// (ties with the `k`-th are kept, as in transformers). At least
/// `min_tokens_to_keep` tokens stay (1 in sampling).
pub fn apply_top_k(mut logits: ArrayViewMut1<f32>, k: usize, min_tokens_to_keep: usize) {
    let k = k.max(min_tokens_to_keep).clamp(1, logits.len());
    let mut sorted: Vec<f32> = logits.to_vec();
    sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    logits.mapv_inplace(|l| if l < kth { f32::NEG_INFINITY } else { l });
}

/// `TopPLogitsWarper` (nucleus): sort ascending, and remove the tokens whose
/// cumulative probability is `≤ 1 - p`, always keeping the
/// `min_tokens_to_keep` most likely ones (1 in sampling).
pub fn apply_top_p(mut logits: ArrayViewMut1<f32>, p: f32, min_tokens_to_keep: usize) {
    let probs = softmax(logits.view());
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[a].total_cmp(&logits[b])); // ascending
    let mut cumulative = 0.0f32;
    let always_kept = order.len().saturating_sub(min_tokens_to_keep.max(1));
    for (rank, &i) in order.iter().enumerate() {
        cumulative += probs[i];
        if cumulative <= 1.0 - p && rank < always_kept {
            logits[i] = f32::NEG_INFINITY;
        }
    }
}

/// The logits after every filter `options` asks for, in transformers' order.
pub fn process_logits(
    logits: ArrayView1<f32>,
    context: &[u32],
    options: &GenerateOptions,
) -> Array1<f32> {
    let mut scores = logits.to_owned();
    if let Some(penalty) = options.repetition_penalty {
        apply_repetition_penalty(scores.view_mut(), context, penalty);
    }
    if options.do_sample {
        if options.temperature != 1.0 {
            apply_temperature(scores.view_mut(), options.temperature);
        }
        if let Some(k) = options.top_k {
            apply_top_k(scores.view_mut(), k, 1);
        }
        if let Some(p) = options.top_p.filter(|&p| p < 1.0) {
            apply_top_p(scores.view_mut(), p, 1);
        }
    }
    scores
}

/// Index of the largest value (the first one on ties, as `torch.argmax`).
pub fn argmax(x: ArrayView1<f32>) -> usize {
    // The scan "keep the first value that no later value exceeds" in two
    // passes: the largest value (the kernels' vectorised `max_lanes`, which
    // passes over NaNs as the scan does), then the first place it occurs;
    // the same index, ties included (no value exceeds NaN: a NaN at 0
    // wins). 50257 logits in 20–35 µs instead of ~67 for the scan: this runs
    // between decoding steps, while the other threads wait.
    let Some(&first) = x.first() else {
        return 0;
    };
    if first.is_nan() {
        return 0;
    }
    let largest = match x.as_slice() {
        Some(values) => max_lanes(values),
        None => x.fold(first, |m, &v| m.max(v)),
    };
    x.iter().position(|&v| v == largest).unwrap_or(0)
}

/// A small seeded pseudo-random generator (SplitMix64): the same seed gives
/// the same stream on every platform, whatever the thread count.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Draw an index from the distribution `softmax(scores)` (`-inf` never drawn).
pub fn sample(scores: ArrayView1<f32>, rng: &mut Rng) -> usize {
    let probs = softmax(scores);
    let u = rng.next_f64() * probs.iter().map(|&p| p as f64).sum::<f64>();
    let mut acc = 0.0f64;
    let mut last_possible = argmax(probs.view());
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            acc += p as f64;
            last_possible = i;
            if u < acc {
                return i;
            }
        }
    }
    last_possible
}

/// Pick the next token from last-position logits.
fn choose(
    logits: ArrayView1<f32>,
    context: &[u32],
    options: &GenerateOptions,
    rng: &mut Rng,
) -> u32 {
    let scores = process_logits(logits, context, options);
    let id = if options.do_sample {
        sample(scores.view(), rng)
    } else {
        argmax(scores.view())
    };
    id as u32
}

// ---------------------------------------------------------------------------
// Streaming text: byte-level tokens → complete UTF-8.
// ---------------------------------------------------------------------------

/// Turns the bytes of successive tokens into text that is safe to print:
/// a character split across tokens is held back until it is complete, and
/// bytes that can never become UTF-8 are printed as `�`.
#[derive(Clone, Debug, Default)]
pub struct TextStream {
    pending: Vec<u8>,
}

impl TextStream {
    /// Add a token's bytes; return the text that became complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete character at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that can never be valid: replace and go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is still held back, lossily (at the end of generation).
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

// ---------------------------------------------------------------------------
// The loop.
// ---------------------------------------------------------------------------

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `max_new_tokens` were generated.
    MaxNewTokens,
    /// `<|endoftext|>` was generated.
    EndOfText,
    /// The text now contains a stop string.
    StopString,
    /// The sequence filled all `n_positions` of the model.
    ContextFull,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopReason::MaxNewTokens => "reached max_new_tokens",
            StopReason::EndOfText => "generated <|endoftext|>",
            StopReason::StopString => "generated a stop string",
            StopReason::ContextFull => "the context is full (n_positions tokens): stopped early",
        })
    }
}

/// One generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub id: u32,
    /// The text that became printable with this token (may be empty).
    pub text: String,
}

/// A generation in progress: an iterator of [`Step`]s, one per new token.
///
/// ```no_run
/// # use gpt2_ndarray::{Gpt2, Tokenizer, generate::{Generation, GenerateOptions}};
/// # fn main() -> anyhow::Result<()> {
/// let model = Gpt2::from_dir("models/gpt2")?;
/// let tokenizer = Tokenizer::from_dir("models/gpt2")?;
/// let prompt = tokenizer.encode("The capital of France is")?;
/// let mut generation = Generation::new(&model, &tokenizer, &prompt, GenerateOptions::default())?;
/// for step in &mut generation {
///     print!("{}", step?.text);
/// }
/// println!("{}", generation.finish_text());
/// # Ok(()) }
/// ```
pub struct Generation<'a> {
    model: &'a Gpt2,
    tokenizer: &'a Tokenizer,
    /// What every forward step changes ([`crate::intervention`]); none by default.
    interventions: &'a Interventions,
    options: GenerateOptions,
    cache: KvCache,
    rng: Rng,
    /// Prompt and generated ids.
    ids: Vec<u32>,
    prompt_len: usize,
    /// Next-token logits, computed by the last forward step.
    logits: Array1<f32>,
    stream: TextStream,
    text: String,
    end_of_text: Option<u32>,
    stop: Option<StopReason>,
    failed: bool,
}

impl<'a> Generation<'a> {
    /// Check the options, run the prompt through the model (the prefill) and
    /// get ready to generate.
    pub fn new(
        model: &'a Gpt2,
        tokenizer: &'a Tokenizer,
        prompt: &[u32],
        options: GenerateOptions,
    ) -> Result<Self> {
        Self::padded(model, tokenizer, prompt, None, options)
    }

    /// [`Generation::new`] with `interventions` acting in every forward step,
    /// the prompt's and each new token's: an intervention at position `p`
    /// acts when position `p` is computed, and what it changes is cached
    /// ([`crate::intervention`] on positions).
    pub fn intervened(
        model: &'a Gpt2,
        tokenizer: &'a Tokenizer,
        prompt: &[u32],
        options: GenerateOptions,
        interventions: &'a Interventions,
    ) -> Result<Self> {
        let mut generation = Self::unprefilled(model, tokenizer, prompt, None, options)?;
        generation.interventions = interventions;
        generation.prefill(prompt, None)?;
        Ok(generation)
    }

    /// [`Generation::new`] for a prompt that carries padding: `mask` (`[T]`,
    /// true at real tokens) marks it, and padding is never attended to nor
    /// counted as context for the repetition penalty.
    pub fn padded(
        model: &'a Gpt2,
        tokenizer: &'a Tokenizer,
        prompt: &[u32],
        mask: Option<&[bool]>,
        options: GenerateOptions,
    ) -> Result<Self> {
        let mut generation = Self::unprefilled(model, tokenizer, prompt, mask, options)?;
        generation.prefill(prompt, mask)?;
        Ok(generation)
    }

    /// Run the prompt (in chunks of [`GenerateOptions::prefill_chunk`]
    /// tokens if set and there are no interventions) and keep the next-token
    /// logits.
    fn prefill(&mut self, prompt: &[u32], mask: Option<&[bool]>) -> Result<()> {
        let logits = if self.interventions.is_empty() {
            let mut steps = [SequenceStep {
                ids: prompt,
                mask,
                cache: &mut self.cache,
            }];
            prefill_in_chunks(self.model, &mut steps, self.options.prefill_chunk)?
        } else {
            self.model.forward_step_intervened(
                prompt,
                mask,
                &mut self.cache,
                Logits::Last,
                &mut Trace::off(),
                self.interventions,
            )?
        };
        self.logits = logits.row(0).to_owned();
        Ok(())
    }

    /// A generation whose prompt has not run yet: options checked, an empty
    /// cache, no logits (the caller runs the prefill and stores them).
    fn unprefilled(
        model: &'a Gpt2,
        tokenizer: &'a Tokenizer,
        prompt: &[u32],
        mask: Option<&[bool]>,
        options: GenerateOptions,
    ) -> Result<Self> {
        options.validate()?;
        if let Some(mask) = mask {
            ensure!(
                mask.iter().any(|&real| real),
                "the prompt is all padding: there is no token to continue"
            );
        }
        let ids: Vec<u32> = match mask {
            Some(mask) => prompt
                .iter()
                .zip(mask)
                .filter(|(_, &m)| m)
                .map(|(&id, _)| id)
                .collect(),
            None => prompt.to_vec(),
        };
        // Room for every position the generation can cache (the prompt, then
        // each new token but the last, at most `n_positions`), made once: the
        // steps then append without copying the cache.
        let positions = (prompt.len() + options.max_new_tokens - 1).min(model.config.n_positions);
        let cache =
            KvCache::with_capacity(&model.config, positions).with_dtype(options.kv_cache)?;
        Ok(Generation {
            model,
            tokenizer,
            interventions: &NO_INTERVENTIONS,
            rng: Rng::new(options.seed),
            options,
            cache,
            prompt_len: ids.len(),
            ids,
            logits: Array1::zeros(0),
            stream: TextStream::default(),
            text: String::new(),
            end_of_text: tokenizer.end_of_text(),
            stop: None,
            failed: false,
        })
    }

    /// The generated ids so far (without the prompt).
    pub fn generated(&self) -> &[u32] {
        &self.ids[self.prompt_len..]
    }

    /// Prompt and generated ids.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Why generation ended (`None` while it goes on, or after an error).
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// The text held back at the end (an incomplete character, printed lossily).
    pub fn finish_text(&mut self) -> String {
        self.stream.finish()
    }

    /// Choose the next token, then (unless a stop rule fires) run it through
    /// the model to get the logits of the one after.
    fn step(&mut self) -> Result<Step> {
        let step = self.choose_next()?;
        if self.stop.is_none() {
            let logits = self.model.forward_step_intervened(
                &[step.id],
                None,
                &mut self.cache,
                Logits::Last,
                &mut Trace::off(),
                self.interventions,
            )?;
            self.logits = logits.row(0).to_owned();
        }
        Ok(step)
    }

    /// The first half of a step: choose the next token from the logits,
    /// append it, and apply the stop rules (which set `self.stop`).
    fn choose_next(&mut self) -> Result<Step> {
        let id = choose(self.logits.view(), &self.ids, &self.options, &mut self.rng);
        self.ids.push(id);
        let text = self.stream.push(&self.tokenizer.token_bytes(id)?);
        self.text.push_str(&text);

        let n_new = self.ids.len() - self.prompt_len;
        self.stop = if self.options.stop_at_end_of_text && Some(id) == self.end_of_text {
            Some(StopReason::EndOfText)
        } else if self
            .options
            .stop_strings
            .iter()
            .any(|s| self.text.contains(s.as_str()))
        {
            Some(StopReason::StopString)
        } else if n_new >= self.options.max_new_tokens {
            Some(StopReason::MaxNewTokens)
        } else if self.cache.len() >= self.model.config.n_positions {
            Some(StopReason::ContextFull)
        } else {
            None
        };
        Ok(Step { id, text })
    }
}

impl Iterator for Generation<'_> {
    type Item = Result<Step>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.stop.is_some() || self.failed {
            return None;
        }
        let step = self.step();
        self.failed = step.is_err();
        Some(step)
    }
}

/// Generate from one prompt; returns the new ids and why it stopped.
pub fn generate(
    model: &Gpt2,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
) -> Result<(Vec<u32>, StopReason)> {
    let mut generation = Generation::new(model, tokenizer, prompt, options.clone())?;
    run_to_end(&mut generation)
}

fn run_to_end(generation: &mut Generation<'_>) -> Result<(Vec<u32>, StopReason)> {
    for step in &mut *generation {
        step?;
    }
    let reason = generation.stop_reason().unwrap_or(StopReason::MaxNewTokens);
    Ok((generation.generated().to_vec(), reason))
}

/// One new token of one sequence of a [`BatchGeneration`].
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStep {
    /// Which sequence (its index among the prompts).
    pub index: usize,
    /// The new token.
    pub id: u32,
    /// The text that became printable with this token (may be empty).
    pub text: String,
    /// `Some` when this token ended the sequence: it leaves the batch.
    pub stop: Option<StopReason>,
}

/// Several generations decoded together: an iterator that yields, per step,
/// one [`BatchStep`] for every sequence still going.
///
/// A step runs the new token of every live sequence through the model as one
/// stacked `[B, C]` matrix ([`Gpt2::forward_steps`]): each weight is read once
/// per step for the whole batch instead of once per sequence, which is what
/// makes decoding a batch cheaper than decoding its prompts one by one (the
/// step is bound by reading the weights). Attention runs per sequence over
/// its own cache. Everything else stays each sequence's own: its logits
/// processors, sampler and seeded generator, its stop rules. A sequence that
/// stops leaves the batch; the others go on. Each sequence generates what
/// [`Generation`] gives its prompt alone with the same options (the products
/// of a batch may round differently in the last bits, which does not change
/// the tokens in practice; the tests check greedy and sampled equality).
///
/// ```no_run
/// # use gpt2_ndarray::{Gpt2, Tokenizer, generate::{BatchGeneration, GenerateOptions}};
/// # fn main() -> anyhow::Result<()> {
/// let model = Gpt2::from_dir("models/gpt2")?;
/// let tokenizer = Tokenizer::from_dir("models/gpt2")?;
/// let prompts = vec![tokenizer.encode("Paris is")?, tokenizer.encode("Once upon a time")?];
/// let mut batch = BatchGeneration::new(&model, &tokenizer, &prompts, GenerateOptions::default())?;
/// for steps in &mut batch {
///     for step in steps? {
///         println!("sequence {}: {:?}", step.index, step.text);
///     }
/// }
/// println!("{:?}", batch.generated(1));
/// # Ok(()) }
/// ```
pub struct BatchGeneration<'a> {
    model: &'a Gpt2,
    sequences: Vec<Generation<'a>>,
    failed: bool,
}

impl<'a> BatchGeneration<'a> {
    /// Check the options, run all the prompts through the model as one
    /// stacked prefill (each prompt its own length, no padding), and get ready
    /// to generate. Sequence `b` samples with its own generator seeded
    /// `options.seed + b`, so the result does not depend on the batch size,
    /// the order of work or the thread count.
    pub fn new(
        model: &'a Gpt2,
        tokenizer: &'a Tokenizer,
        prompts: &[Vec<u32>],
        options: GenerateOptions,
    ) -> Result<Self> {
        let rows = prompts.iter().map(|p| (p.as_slice(), None));
        Self::start(model, tokenizer, rows, options)
    }

    /// [`BatchGeneration::new`] for a padded batch: `ids` and `mask` are
    /// `[B, T]`, `mask` true at real tokens (padding left or right, never
    /// attended to nor counted as context).
    pub fn padded(
        model: &'a Gpt2,
        tokenizer: &'a Tokenizer,
        ids: &Array2<u32>,
        mask: &Array2<bool>,
        options: GenerateOptions,
    ) -> Result<Self> {
        ensure!(
            ids.dim() == mask.dim(),
            "ids are {:?} but the attention mask is {:?}",
            ids.dim(),
            mask.dim()
        );
        let ids: Vec<Vec<u32>> = ids.outer_iter().map(|r| r.to_vec()).collect();
        let mask: Vec<Vec<bool>> = mask.outer_iter().map(|r| r.to_vec()).collect();
        let rows = ids.iter().zip(&mask).map(|(i, m)| (&i[..], Some(&m[..])));
        Self::start(model, tokenizer, rows, options)
    }

    fn start<'p>(
        model: &'a Gpt2,
        tokenizer: &'a Tokenizer,
        rows: impl Iterator<Item = (&'p [u32], Option<&'p [bool]>)>,
        options: GenerateOptions,
    ) -> Result<Self> {
        options.validate()?;
        let rows: Vec<_> = rows.collect();
        ensure!(!rows.is_empty(), "the batch has no prompts");
        let mut sequences = Vec::with_capacity(rows.len());
        for (b, &(prompt, mask)) in rows.iter().enumerate() {
            ensure!(
                !prompt.is_empty(),
                "prompt {b} of the batch is empty: there is no token to continue"
            );
            let options = GenerateOptions {
                seed: options.seed.wrapping_add(b as u64),
                ..options.clone()
            };
            let generation = Generation::unprefilled(model, tokenizer, prompt, mask, options)
                .map_err(|e| e.context(format!("prompt {b} of the batch")))?;
            sequences.push(generation);
        }
        let mut steps: Vec<SequenceStep<'_>> = sequences
            .iter_mut()
            .zip(&rows)
            .map(|(g, &(ids, mask))| SequenceStep {
                ids,
                mask,
                cache: &mut g.cache,
            })
            .collect();
        let logits = prefill_in_chunks(model, &mut steps, options.prefill_chunk)?; // [B, vocab]
        for (g, row) in sequences.iter_mut().zip(logits.rows()) {
            g.logits = row.to_owned();
        }
        Ok(BatchGeneration {
            model,
            sequences,
            failed: false,
        })
    }

    /// Number of sequences (stopped ones included).
    pub fn len(&self) -> usize {
        self.sequences.len()
    }

    /// Whether the batch has no sequences (never: the constructors refuse it).
    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }

    /// Number of sequences still generating.
    pub fn live(&self) -> usize {
        self.sequences.iter().filter(|g| g.stop.is_none()).count()
    }

    /// The ids sequence `b` generated so far (without its prompt).
    pub fn generated(&self, b: usize) -> &[u32] {
        self.sequences[b].generated()
    }

    /// Why sequence `b` ended (`None` while it goes on, or after an error).
    pub fn stop_reason(&self, b: usize) -> Option<StopReason> {
        self.sequences[b].stop_reason()
    }

    /// The text sequence `b` holds back at the end (lossily).
    pub fn finish_text(&mut self, b: usize) -> String {
        self.sequences[b].finish_text()
    }

    /// One step: every live sequence chooses its next token (its own
    /// processors, sampler and stop rules; in parallel), then those that go
    /// on run their tokens through the model together.
    fn step(&mut self) -> Result<Vec<BatchStep>> {
        let chosen: Vec<(usize, Result<Step>)> = self
            .sequences
            .par_iter_mut()
            .enumerate()
            .filter(|(_, g)| g.stop.is_none())
            .map(|(b, g)| (b, g.choose_next()))
            .collect();
        let mut out = Vec::with_capacity(chosen.len());
        for (b, step) in chosen {
            let step = step.map_err(|e| e.context(format!("sequence {b} of the batch")))?;
            let stop = self.sequences[b].stop;
            out.push(BatchStep {
                index: b,
                id: step.id,
                text: step.text,
                stop,
            });
        }
        let going: Vec<(usize, [u32; 1])> = out
            .iter()
            .filter(|s| s.stop.is_none())
            .map(|s| (s.index, [s.id]))
            .collect();
        if going.is_empty() {
            return Ok(out);
        }
        let mut going_iter = going.iter().peekable();
        let mut steps = Vec::with_capacity(going.len());
        for (b, g) in self.sequences.iter_mut().enumerate() {
            if let Some((_, ids)) = going_iter.next_if(|(index, _)| *index == b) {
                steps.push(SequenceStep {
                    ids,
                    mask: None,
                    cache: &mut g.cache,
                });
            }
        }
        let logits = self.model.forward_steps(&mut steps, Logits::Last)?; // [live, vocab]
        for (&(b, _), row) in going.iter().zip(logits.rows()) {
            self.sequences[b].logits.assign(&row);
        }
        Ok(out)
    }
}

impl Iterator for BatchGeneration<'_> {
    type Item = Result<Vec<BatchStep>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.sequences.iter().all(|g| g.stop.is_some()) {
            return None;
        }
        let step = self.step();
        self.failed = step.is_err();
        Some(step)
    }
}

/// Generate from several prompts of different lengths as one batch
/// ([`BatchGeneration`]): one stacked prefill, then every decoding step runs
/// the live sequences' new tokens together, until each sequence's own stop
/// rule. Sequence `b` samples with its own generator seeded `seed + b`, so
/// it generates exactly what [`generate`] gives its prompt alone with that
/// seed, whatever the thread count. Returns the new ids of each prompt.
pub fn generate_batch(
    model: &Gpt2,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
) -> Result<Vec<Vec<u32>>> {
    let mut batch = BatchGeneration::new(model, tokenizer, prompts, options.clone())?;
    for step in &mut batch {
        step?;
    }
    Ok((0..batch.len())
        .map(|b| batch.generated(b).to_vec())
        .collect())
}

/// Run the prompts of `steps` through the model, at most about `chunk` rows
/// at a time over the whole batch (`None`: all at once), and return each
/// one's last logits `[B, vocab]`. A prompt longer than its share (`chunk / B` rows, at least
/// one) runs over several forward steps, each adding its keys and values to
/// the cache before the next; the head runs once per prompt, at its end. A
/// padded prompt's first chunk reaches its first real token (a step must
/// have one to attend to). Every prompt is checked before any runs.
fn prefill_in_chunks(
    model: &Gpt2,
    steps: &mut [SequenceStep<'_>],
    chunk: Option<usize>,
) -> Result<Array2<f32>> {
    for (b, step) in steps.iter().enumerate() {
        let checked = model.check_step(step.ids, step.mask, step.cache);
        match steps.len() {
            1 => checked?,
            _ => checked.map_err(|e| e.context(format!("prompt {b} of the batch")))?,
        }
    }
    let chunk = match chunk {
        Some(chunk) if steps.iter().map(|s| s.ids.len()).sum::<usize>() > chunk => chunk,
        _ => return model.forward_steps(steps, Logits::Last),
    };
    let share = (chunk / steps.len()).max(1);
    let lens: Vec<usize> = steps.iter().map(|s| s.ids.len()).collect();
    let mut logits = Array2::zeros((steps.len(), model.config.vocab_size));
    let mut done = vec![0; steps.len()]; // rows of each prompt run so far
    while done != lens {
        let mut round = Vec::new(); // (b, this round's end)
        let mut wanted = Vec::new(); // whether that end is the prompt's
        let mut sub = Vec::new();
        for (b, step) in steps.iter_mut().enumerate() {
            let (start, len) = (done[b], lens[b]);
            if start == len {
                continue;
            }
            let first_real = match (start, step.mask) {
                (0, Some(mask)) => mask.iter().position(|&real| real).unwrap_or(0) + 1,
                _ => 0,
            };
            let end = (start + share).max(first_real).min(len);
            round.push((b, end));
            wanted.push(end == len);
            let (ids, mask) = (step.ids, step.mask);
            sub.push(SequenceStep {
                ids: &ids[start..end],
                mask: mask.map(|mask| &mask[start..end]),
                cache: &mut *step.cache,
            });
        }
        let out = model.forward_steps_wanting(&mut sub, &wanted)?; // [finished, vocab]
        let finished = round.iter().filter(|&&(b, end)| end == lens[b]);
        for (&(b, _), row) in finished.zip(out.rows()) {
            logits.row_mut(b).assign(&row);
        }
        for (b, end) in round {
            done[b] = end;
        }
    }
    Ok(logits)
}

/// Pad sequences on the left to the longest: ids `[B, T]` and mask `[B, T]`
/// (true at real tokens).
pub fn left_pad(sequences: &[Vec<u32>], pad: u32) -> (Array2<u32>, Array2<bool>) {
    let width = sequences.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Array2::from_elem((sequences.len(), width), pad);
    let mut mask = Array2::from_elem((sequences.len(), width), false);
    for (b, seq) in sequences.iter().enumerate() {
        let start = width - seq.len();
        for (t, &id) in seq.iter().enumerate() {
            ids[[b, start + t]] = id;
            mask[[b, start + t]] = true;
        }
    }
    (ids, mask)
}
