//! The GPT-2 model: weights named as the checkpoint keys, and the forward pass.
//!
//! ```text
//! ids [T] ──► wte[ids] + wpe[pos] ─────────────────────► x [T, C]          embed
//!             for each block h[i]:
//!                 x = x + attn(ln_1(x))                   causal self-attention
//!                 x = x + mlp(ln_2(x))                    c_fc → act → c_proj
//!             ln_f(x) · wteᵀ ──────────────────────────► logits [T, vocab]  head (tied to wte)
//! ```
//!
//! The forward pass is [`Gpt2::forward_step`]; everything else is a convenience
//! on top of it. Dropout is the identity at inference and does not appear.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;

use anyhow::{bail, ensure, Result};
use ndarray::{s, Array1, Array2, Array3, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use crate::checkpoint::Dtype;
use crate::config::Config;
use crate::intervention::{Hooks, Interventions};
use crate::kernels::attention::attend_fetching;
use crate::kernels::{conv1d, layer_norm, matmul_weight, AttentionMaps};
use crate::trace::Trace;
use crate::weights::{Conv1D, LayerNorm, Matrix};

mod cache;
mod load;
mod parameters;
mod save;

pub use cache::KvCache;
use cache::Stored;
pub use load::{LoadOptions, WeightsFormat};
pub use parameters::{Parameter, ParameterMut, BLOCK_PARAMETERS};

/// Passes of at least this many rows run on the calling thread, shorter ones
/// on a thread of the pool (see [`Gpt2::forward_rows`]). From the calling
/// thread, a prompt of 256 to 1024 tokens took as long as on a pool thread
/// (best of 3 to 7, alternated three times, AMD EPYC Zen 4, 2 threads: f32
/// T=1024 983–999 ms from the pool, 986–1168 from the caller, T=256 243–250
/// and 242–253; f16 T=1024 1011–1081 and 993–1078).
const CALLER_ROWS: usize = 256;

/// GPT-2 with a language-model head (`GPT2LMHeadModel`). Field names are the
/// state-dict keys: `h[3].attn.c_attn.weight` is `h.3.attn.c_attn.weight`.
#[derive(Clone, Debug)]
pub struct Gpt2 {
    pub config: Config,
    /// Token embeddings `[vocab, C]`; also the head when tied.
    pub wte: Matrix,
    /// Position embeddings `[n_positions, C]`.
    pub wpe: Matrix,
    /// The transformer blocks.
    pub h: Vec<Block>,
    /// Final LayerNorm.
    pub ln_f: LayerNorm,
    /// `lm_head.weight` `[vocab, C]`, only when the config unties it from `wte`.
    pub lm_head: Option<Matrix>,
    /// Bytes the parameters took in the checkpoint, by stored dtype. Empty for
    /// a model not read from a file. (What they take in memory:
    /// [`Gpt2::weight_bytes`].)
    pub stored_bytes: BTreeMap<Dtype, usize>,
}

/// One transformer block (`GPT2Block`).
#[derive(Clone, Debug)]
pub struct Block {
    pub ln_1: LayerNorm,
    pub attn: Attention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

/// Causal self-attention (`GPT2Attention`).
#[derive(Clone, Debug)]
pub struct Attention {
    /// `[C, 3C]`: the `q | k | v` projection.
    pub c_attn: Conv1D,
    /// `[C, C]`: the output projection.
    pub c_proj: Conv1D,
}

/// The feed-forward network (`GPT2MLP`).
#[derive(Clone, Debug)]
pub struct Mlp {
    /// `[C, n_inner]`.
    pub c_fc: Conv1D,
    /// `[n_inner, C]`.
    pub c_proj: Conv1D,
}

/// Which positions the language-model head is applied to. The head is the
/// widest matrix of the model (`C × 50257`), so generation asks for the last
/// position only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Every position of the step: `[T, vocab]`.
    All,
    /// The last position only: `[1, vocab]`.
    Last,
}

/// One sequence's part of [`Gpt2::forward_steps`]: its new tokens, their
/// padding mask (`true` = real token; `None`: all real), and its own cache.
pub struct SequenceStep<'a> {
    /// The new tokens of this sequence (at least one).
    pub ids: &'a [u32],
    /// `[ids.len()]`, as in [`Gpt2::forward_step`].
    pub mask: Option<&'a [bool]>,
    /// This sequence's past; the step appends its keys and values.
    pub cache: &'a mut KvCache,
}

/// One sequence of a forward step that runs several: its new tokens are the
/// rows `rows` of the stacked activations, and `cache` holds its past.
struct Sequence<'c> {
    rows: Range<usize>,
    cache: &'c mut KvCache,
    /// Whether the step wants this sequence's logits ([`Logits::Last`] only:
    /// a chunk of a prompt before its last only fills the cache).
    logits: bool,
}

impl Gpt2 {
    /// The model with its weight matrices stored as `dtype` ([`Dtype::F32`],
    /// [`Dtype::F16`] or [`Dtype::BF16`]), converted once, here: each value
    /// rounded to the nearest `dtype` value. Biases and layer-norm parameters
    /// (a few thousand numbers) stay `f32` in memory, rounded to `dtype` too,
    /// so that the result is exactly the model a checkpoint saved in `dtype`
    /// loads as (`examples/convert.rs` writes one). Matrices already in
    /// `dtype` are shared, not copied. The fast forward pass then reads the
    /// halves as stored and computes in `f32`.
    ///
    /// # Panics
    ///
    /// For [`Dtype::F64`], which is not a dtype weights are kept in.
    pub fn to_dtype(&self, dtype: Dtype) -> Gpt2 {
        assert!(
            dtype != Dtype::F64,
            "weights are kept as f32, f16 or bf16, not f64"
        );
        let round = |v: &Array1<f32>| match dtype {
            Dtype::F16 => v.mapv(|x| half::f16::from_f32(x).to_f32()),
            Dtype::BF16 => v.mapv(|x| half::bf16::from_f32(x).to_f32()),
            _ => v.clone(),
        };
        let ln = |ln: &LayerNorm| LayerNorm {
            weight: round(&ln.weight),
            bias: round(&ln.bias),
            eps: ln.eps,
        };
        let conv = |c: &Conv1D| Conv1D {
            weight: c.weight.to_dtype(dtype),
            bias: round(&c.bias),
        };
        Gpt2 {
            config: self.config.clone(),
            wte: self.wte.to_dtype(dtype),
            wpe: self.wpe.to_dtype(dtype),
            h: self
                .h
                .iter()
                .map(|b| Block {
                    ln_1: ln(&b.ln_1),
                    attn: Attention {
                        c_attn: conv(&b.attn.c_attn),
                        c_proj: conv(&b.attn.c_proj),
                    },
                    ln_2: ln(&b.ln_2),
                    mlp: Mlp {
                        c_fc: conv(&b.mlp.c_fc),
                        c_proj: conv(&b.mlp.c_proj),
                    },
                })
                .collect(),
            ln_f: ln(&self.ln_f),
            lm_head: self.lm_head.as_ref().map(|w| w.to_dtype(dtype)),
            stored_bytes: self.stored_bytes.clone(),
        }
    }

    /// The model with `f32` weight matrices: itself (borrowed) when they all
    /// are, else an upcast copy ([`Gpt2::to_dtype`]`(F32)`, exact). The
    /// reference tier starts with this, so that it reads plain `f32` views.
    pub fn upcast(&self) -> Cow<'_, Gpt2> {
        if self.matrices().all(|m| m.dtype() == Dtype::F32) {
            Cow::Borrowed(self)
        } else {
            Cow::Owned(self.to_dtype(Dtype::F32))
        }
    }

    /// Every weight matrix: `wte`, `wpe`, each block's four `Conv1D`
    /// weights, and `lm_head` when untied.
    pub fn matrices(&self) -> impl Iterator<Item = &Matrix> {
        let blocks = self.h.iter().flat_map(|b| {
            [
                &b.attn.c_attn.weight,
                &b.attn.c_proj.weight,
                &b.mlp.c_fc.weight,
                &b.mlp.c_proj.weight,
            ]
        });
        [&self.wte, &self.wpe]
            .into_iter()
            .chain(blocks)
            .chain(self.lm_head.as_ref())
    }

    /// The dtype the weight matrices are kept in, `None` if they differ.
    pub fn dtype(&self) -> Option<Dtype> {
        let mut dtypes = self.matrices().map(Matrix::dtype);
        let first = dtypes.next()?;
        dtypes.all(|d| d == first).then_some(first)
    }

    /// Bytes the parameters take in memory: the matrices in their stored
    /// dtype, the vectors (biases, layer norms) as `f32`.
    pub fn weight_bytes(&self) -> usize {
        let matrices: usize = self.matrices().map(Matrix::stored_bytes).sum();
        let vectors: usize = self
            .h
            .iter()
            .flat_map(|b| {
                [
                    &b.ln_1.weight,
                    &b.ln_1.bias,
                    &b.attn.c_attn.bias,
                    &b.attn.c_proj.bias,
                    &b.ln_2.weight,
                    &b.ln_2.bias,
                    &b.mlp.c_fc.bias,
                    &b.mlp.c_proj.bias,
                ]
            })
            .chain([&self.ln_f.weight, &self.ln_f.bias])
            .map(|v| v.len() * std::mem::size_of::<f32>())
            .sum();
        matrices + vectors
    }

    /// Logits `[T, vocab]` of one sequence, every position.
    pub fn forward(&self, ids: &[u32]) -> Result<Array2<f32>> {
        self.forward_traced(ids, &mut Trace::off())
    }

    /// [`Gpt2::forward`], recording the activations `trace` asks for.
    pub fn forward_traced(&self, ids: &[u32], trace: &mut Trace) -> Result<Array2<f32>> {
        let mut cache = KvCache::one_pass(self.config.n_layer);
        self.forward_step(ids, None, &mut cache, Logits::All, trace)
    }

    /// The next-token logits `[vocab]` after `ids`.
    pub fn next_token_logits(&self, ids: &[u32]) -> Result<Array1<f32>> {
        let mut cache = KvCache::one_pass(self.config.n_layer);
        let logits = self.forward_step(ids, None, &mut cache, Logits::Last, &mut Trace::off())?;
        Ok(logits.row(0).to_owned())
    }

    /// The forward pass: run `ids` as the positions following those already in
    /// `cache`, append their keys and values to it, and return the logits.
    ///
    /// `mask` (`[T]`, `true` = real token) marks padding: a padding token is
    /// never attended to and does not advance the position ids, so a
    /// left-padded sequence gives at its real positions what the unpadded one
    /// gives. Without a mask every token is real.
    ///
    /// Errors: an empty step, a token id `≥ vocab_size`, or more than
    /// `n_positions` positions in all.
    ///
    /// The pass runs on the current rayon pool (the global one, or the one
    /// the caller is in, e.g. under `pool.install`); its result does not
    /// depend on the pool's number of threads.
    pub fn forward_step(
        &self,
        ids: &[u32],
        mask: Option<&[bool]>,
        cache: &mut KvCache,
        logits: Logits,
        trace: &mut Trace,
    ) -> Result<Array2<f32>> {
        let none = Interventions::none();
        self.forward_step_intervened(ids, mask, cache, logits, trace, &none)
    }

    /// [`Gpt2::forward`] with `interventions` changing activations as it runs
    /// ([`crate::intervention`]), recording what `trace` asks for.
    pub fn forward_intervened(
        &self,
        ids: &[u32],
        trace: &mut Trace,
        interventions: &Interventions,
    ) -> Result<Array2<f32>> {
        let mut cache = KvCache::one_pass(self.config.n_layer);
        self.forward_step_intervened(ids, None, &mut cache, Logits::All, trace, interventions)
    }

    /// [`Gpt2::forward_step`] with `interventions` ([`crate::intervention`]):
    /// each acts on the positions of this step it names, and what it changes
    /// is what the cache keeps. Errors as [`Gpt2::forward_step`], and for an
    /// intervention that does not fit the model (a site, block or head that
    /// does not exist, a value of the wrong shape).
    pub fn forward_step_intervened(
        &self,
        ids: &[u32],
        mask: Option<&[bool]>,
        cache: &mut KvCache,
        logits: Logits,
        trace: &mut Trace,
        interventions: &Interventions,
    ) -> Result<Array2<f32>> {
        self.check_step(ids, mask, cache)?;
        interventions.check(&self.config)?;
        let x = self.embed(ids, mask, cache); // [T, C]
        let mut sequences = [Sequence {
            rows: 0..ids.len(),
            cache,
            logits: true,
        }];
        Ok(self.forward_rows(x, &mut sequences, logits, trace, interventions))
    }

    /// One forward step of several sequences, each with its own new tokens
    /// and its own cache: every linear layer multiplies all their rows as one
    /// stacked `[ΣT, C]` matrix (so a decoding step of B sequences reads each
    /// weight once, not B times), and attention runs per sequence over its
    /// own cache. Returns the logits stacked in the order of `steps`:
    /// `[ΣT, vocab]`, or `[B, vocab]` (each sequence's last position) for
    /// [`Logits::Last`].
    ///
    /// Each sequence's logits are those [`Gpt2::forward_step`] gives it alone,
    /// up to the rounding of a product of another shape. Errors as
    /// [`Gpt2::forward_step`], naming the sequence; nothing is run (and no
    /// cache changes) unless every sequence can run.
    pub fn forward_steps(
        &self,
        steps: &mut [SequenceStep<'_>],
        logits: Logits,
    ) -> Result<Array2<f32>> {
        self.forward_steps_intervened(steps, logits, &Interventions::none())
    }

    /// [`Gpt2::forward_steps`] with `interventions`
    /// ([`crate::intervention`]); one that names a sequence
    /// ([`Intervention::in_sequence`](crate::intervention::Intervention::in_sequence))
    /// acts on the `b`-th of `steps` only.
    pub fn forward_steps_intervened(
        &self,
        steps: &mut [SequenceStep<'_>],
        logits: Logits,
        interventions: &Interventions,
    ) -> Result<Array2<f32>> {
        self.steps(steps, logits, None, interventions)
    }

    /// [`Gpt2::forward_steps`] with [`Logits::Last`] of the sequences whose
    /// entry in `wanted` is true only (`[count, vocab]`, in order): the others
    /// only fill their caches, their last rows leave the last block with the
    /// rest. The steps of a prompt run in chunks ([`crate::generate`]).
    pub(crate) fn forward_steps_wanting(
        &self,
        steps: &mut [SequenceStep<'_>],
        wanted: &[bool],
    ) -> Result<Array2<f32>> {
        ensure!(
            wanted.len() == steps.len(),
            "{} sequences, {} wanted flags",
            steps.len(),
            wanted.len()
        );
        self.steps(steps, Logits::Last, Some(wanted), &Interventions::none())
    }

    /// The body of [`Gpt2::forward_steps_intervened`] and
    /// [`Gpt2::forward_steps_wanting`] (`wanted`: `None` = every sequence).
    fn steps(
        &self,
        steps: &mut [SequenceStep<'_>],
        logits: Logits,
        wanted: Option<&[bool]>,
        interventions: &Interventions,
    ) -> Result<Array2<f32>> {
        ensure!(!steps.is_empty(), "no sequences to run");
        interventions.check(&self.config)?;
        for (b, step) in steps.iter().enumerate() {
            self.check_step(step.ids, step.mask, step.cache)
                .map_err(|e| e.context(format!("sequence {b} of the step")))?;
        }
        let total: usize = steps.iter().map(|s| s.ids.len()).sum();
        let mut x = Array2::zeros((total, self.config.n_embd)); // [ΣT, C]
        let mut sequences = Vec::with_capacity(steps.len());
        let mut row = 0;
        for (b, step) in steps.iter_mut().enumerate() {
            let rows = row..row + step.ids.len();
            self.embed_into(
                step.ids,
                step.mask,
                step.cache,
                x.slice_mut(s![rows.clone(), ..]),
            );
            row = rows.end;
            sequences.push(Sequence {
                rows,
                cache: &mut *step.cache,
                logits: wanted.is_none_or(|wanted| wanted[b]),
            });
        }
        Ok(self.forward_rows(x, &mut sequences, logits, &mut Trace::off(), interventions))
    }

    /// The forward pass of several sequences at once, their rows stacked in
    /// one `[ΣT, C]` matrix: every linear layer then multiplies all of them by
    /// its weights in one product (a batch of 8 prompts of 128 tokens is one
    /// `[1024, C]` product per layer, not eight `[128, C]` ones), and only
    /// attention looks at each sequence, with its own cache, separately.
    /// Returns the logits `[ΣT', vocab]` (`T'` = 1 per sequence for
    /// [`Logits::Last`]). The trace records the stacked activations.
    fn forward_rows(
        &self,
        x: Array2<f32>,
        sequences: &mut [Sequence<'_>],
        logits: Logits,
        trace: &mut Trace,
        edits: &Interventions,
    ) -> Array2<f32> {
        // A short pass (a decoding step) runs on one of the pool's threads:
        // each parallel step inside it then shares its work with the pool's
        // other threads directly, instead of queueing it from outside the
        // pool and waiting to be woken when it is done (a hundred times per
        // decoded token). A long one runs on the calling thread, its parallel
        // steps queued to the pool (a few microseconds each, against
        // milliseconds of work): its activations, megabytes, are then
        // allocated and freed by the caller's thread, whose next long prompt
        // reuses them. Run on whichever pool thread picked it up, two
        // successive prompts could land on different threads, each with its
        // own `malloc` arena, and the first's freed activations stayed
        // resident beside the second's (the memory probe of `bench` read
        // 333 or 361 MB from run to run, f16 weights and cache).
        if x.nrows() >= CALLER_ROWS {
            self.layers(x, sequences, logits, trace, edits)
        } else {
            rayon::scope(|_| self.layers(x, sequences, logits, trace, edits))
        }
    }

    /// The body of [`Gpt2::forward_rows`]: blocks, final layer norm, head.
    fn layers(
        &self,
        mut x: Array2<f32>,
        sequences: &mut [Sequence<'_>],
        logits: Logits,
        trace: &mut Trace,
        edits: &Interventions,
    ) -> Array2<f32> {
        let new_rows = sequences.iter().map(|s| (s.cache.len(), s.rows.len()));
        let mut hooks = Hooks::new(edits, new_rows, self.config.n_head);
        hooks.apply(None, "embed", &mut x);
        trace.record("embed", x.view());
        let last_rows: Vec<usize> = sequences
            .iter()
            .filter(|s| s.logits)
            .map(|s| s.rows.end - 1)
            .collect();
        for (i, block) in self.h.iter().enumerate() {
            // Only the rows whose logits are wanted need to leave the last
            // block: there, every row still gives the cache its key and value,
            // but only the wanted ones ask a query and go through the MLP.
            let last_block = i + 1 == self.h.len();
            let keep = (last_block && logits == Logits::Last).then_some(&last_rows[..]);
            x = self.block(i, block, x, sequences, keep, trace, &mut hooks);
            for seq in sequences.iter_mut() {
                seq.cache.block_done(i);
            }
        }
        debug_assert!(!self.h.is_empty(), "Config::validate refuses n_layer = 0");
        let mut x = layer_norm(x.view(), &self.ln_f);
        hooks.apply(None, "ln_f", &mut x);
        trace.record("ln_f", x.view());
        let logits = self.head(x.view()); // [T', vocab]
        trace.record("logits", logits.view());
        logits
    }

    /// `x = wte[ids] + wpe[positions]`: `[T]` → `[T, C]`, the positions
    /// following those in `cache` (which registers them).
    fn embed(&self, ids: &[u32], mask: Option<&[bool]>, cache: &mut KvCache) -> Array2<f32> {
        let mut x = Array2::zeros((ids.len(), self.config.n_embd));
        self.embed_into(ids, mask, cache, x.view_mut());
        x
    }

    /// [`Gpt2::embed`] into the rows `x` (`[T, C]`) of a larger matrix.
    fn embed_into(
        &self,
        ids: &[u32],
        mask: Option<&[bool]>,
        cache: &mut KvCache,
        mut x: ArrayViewMut2<f32>,
    ) {
        let mask: Vec<bool> = mask.map_or_else(|| vec![true; ids.len()], <[bool]>::to_vec);
        let positions = cache.push_positions(&mask);
        for ((mut row, &id), &pos) in x.rows_mut().into_iter().zip(ids).zip(&positions) {
            row.assign(&self.wte.row_f32(id as usize));
            row += &self.wpe.row_f32(pos);
        }
    }

    /// One transformer block: `x = x + attn(ln_1(x))`, then `x = x + mlp(ln_2(x))`.
    ///
    /// With `keep`, only those rows leave the block (`[T, C]` → `[len, C]`):
    /// all rows still add their keys and values to the cache.
    ///
    /// Each branch takes its input by value and drops it, and `q | k | v`,
    /// as soon as its first product has used them, so a long prompt holds
    /// `x` and at most two of a branch's intermediates at a time: the heap
    /// of `bench`'s memory probe (an 896-token prompt, GPT-2 small, f16
    /// weights and cache) peaks at 71.2 MiB instead of 76.5.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        i: usize,
        h: &Block,
        x: Array2<f32>,
        sequences: &mut [Sequence<'_>],
        keep: Option<&[usize]>,
        trace: &mut Trace,
        hooks: &mut Hooks<'_>,
    ) -> Array2<f32> {
        let mut a = layer_norm(x.view(), &h.ln_1); // [T, C]
        hooks.apply(Some(i), "ln_1", &mut a);
        trace.record_in(i, "ln_1", a.view());
        let attn = self.attention(i, &h.attn, a, sequences, keep, trace, hooks);
        let mut x = match keep {
            Some(rows) => x.select(Axis(0), rows),
            None => x,
        };
        residual(&mut x, &attn);
        hooks.apply(Some(i), "resid_1", &mut x);
        trace.record_in(i, "resid_1", x.view());

        let mut m = layer_norm(x.view(), &h.ln_2); // [T, C]
        hooks.apply(Some(i), "ln_2", &mut m);
        trace.record_in(i, "ln_2", m.view());
        residual(&mut x, &self.mlp(i, &h.mlp, m, trace, hooks));
        hooks.apply(Some(i), "", &mut x);
        trace.record_in(i, "", x.view());
        x
    }

    /// Causal self-attention of block `i`: project to `q | k | v`, append `k`, `v`
    /// to the cache, attend with every head over all cached positions, merge,
    /// project. `x: [T, C]` → `[T, C]`, or `[len, C]` for the queries of the
    /// rows in `keep` only.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        i: usize,
        attn: &Attention,
        x: Array2<f32>,
        sequences: &mut [Sequence<'_>],
        keep: Option<&[usize]>,
        trace: &mut Trace,
        hooks: &mut Hooks<'_>,
    ) -> Array2<f32> {
        // `q | k | v` ([T, 3C]) lives in this scope only: dropped before the
        // output projection, as `x` is once projected.
        let mut merged = {
            let c = self.config.n_embd;
            let mut qkv = conv1d(x.view(), &attn.c_attn); // [T, 3C]
            drop(x);
            hooks.apply(Some(i), "attn.c_attn", &mut qkv);
            trace.record_in(i, "attn.c_attn", qkv.view());
            let (q, k, v) = (
                qkv.slice(s![.., ..c]),
                qkv.slice(s![.., c..2 * c]),
                qkv.slice(s![.., 2 * c..]),
            );
            for seq in sequences.iter_mut() {
                let rows = s![seq.rows.clone(), ..];
                seq.cache.append(i, k.slice(rows), v.slice(rows));
            }
            // The queries that attend: every row, or the kept one of each sequence
            // whose logits are wanted (none of the others').
            let kept;
            let (q, query_rows): (ArrayView2<f32>, Vec<Range<usize>>) = match keep {
                Some(rows) => {
                    hooks.keep(rows);
                    kept = q.select(Axis(0), rows);
                    let mut next = 0;
                    let query_rows = sequences
                        .iter()
                        .map(|seq| {
                            let r = next;
                            next += usize::from(seq.logits);
                            r..next
                        })
                        .collect();
                    (kept.view(), query_rows)
                }
                None => (q, sequences.iter().map(|s| s.rows.clone()).collect()),
            };
            // The first rows of the projection's weights are asked for while
            // a decoding step of one sequence attends (not measured for
            // several sequences at once).
            let next = match sequences {
                [_] => attn.c_proj.weight.stored().bytes().unwrap_or_default(),
                _ => &[],
            };
            self.attend(i, q, &query_rows, sequences, next, trace) // [T, C]
        };
        hooks.apply(Some(i), "attn.merged", &mut merged); // and attn.z: its heads' columns
        trace.record_in(i, "attn.merged", merged.view());
        if trace.asks_for_in(i, "attn.z") {
            let z = split_heads(merged.view(), self.config.n_head); // [n_head, T, d]
            trace.record_in(i, "attn.z", z.view());
        }
        let mut out = conv1d(merged.view(), &attn.c_proj); // [T, C]
        hooks.apply(Some(i), "attn.c_proj", &mut out);
        trace.record_in(i, "attn.c_proj", out.view());
        out
    }

    /// Every head of block `i`: each sequence's queries (its rows
    /// `query_rows` of `q`) attend over its own cache, into the same rows of
    /// the result `[T, C]`; sequences and heads in parallel. A trace of one
    /// sequence may also ask for `q`, `k`, `v` `[n_head, T, d]` and the maps
    /// `[n_head, Tq, Tk]`: the same kernel then keeps them as it goes.
    ///
    /// `next`, the bytes read right after (the output projection's weights),
    /// is asked for into the cache meanwhile by the attention of one query
    /// (a decoding step; a hint, see
    /// [`kernels::attention`](crate::kernels::attention)).
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        i: usize,
        q: ArrayView2<f32>,
        query_rows: &[Range<usize>],
        sequences: &[Sequence<'_>],
        next: &[u8],
        trace: &mut Trace,
    ) -> Array2<f32> {
        let (n_head, scale) = (self.config.n_head, self.config.attention_scale(i));
        // Only a trace of one sequence records q, k, v and the maps.
        let keep_maps = match sequences {
            [seq] => {
                if trace.wants_in(i, "attn.q") {
                    trace.record_in(i, "attn.q", split_heads(q, n_head).view());
                }
                if ["attn.k", "attn.v"]
                    .iter()
                    .any(|name| trace.wants_in(i, name))
                {
                    // [Tk, C]: cached positions and these (a half cache's widened).
                    let (k, v) = seq.cache.keys_values(i);
                    for (name, t) in [("attn.k", k), ("attn.v", v)] {
                        if trace.wants_in(i, name) {
                            trace.record_in(i, name, split_heads(t.view(), n_head).view());
                        }
                    }
                }
                ["attn.scores", "attn.probs"]
                    .iter()
                    .any(|m| trace.wants_in(i, m))
            }
            _ => false,
        };

        let mut heads: Vec<(Array2<f32>, Option<AttentionMaps>)> = sequences
            .par_iter()
            .zip(query_rows)
            .map(|(seq, rows)| {
                if rows.is_empty() {
                    return (Array2::zeros((0, q.ncols())), None);
                }
                let q = q.slice(s![rows.clone(), ..]);
                let mask = seq.cache.key_mask();
                match seq.cache.stored(i) {
                    Stored::F32(k, v) => {
                        attend_fetching(q, k, v, n_head, scale, mask, keep_maps, next)
                    }
                    Stored::F16(k, v) => {
                        attend_fetching(q, k, v, n_head, scale, mask, keep_maps, next)
                    }
                    Stored::BF16(k, v) => {
                        attend_fetching(q, k, v, n_head, scale, mask, keep_maps, next)
                    }
                }
            })
            .collect();
        if let [(merged, maps)] = &mut heads[..] {
            if let Some(maps) = maps {
                trace.record_in(i, "attn.scores", maps.scores.view());
                trace.record_in(i, "attn.probs", maps.probs.view());
            }
            return std::mem::take(merged);
        }
        let outputs: Vec<ArrayView2<f32>> = heads.iter().map(|(out, _)| out.view()).collect();
        ndarray::concatenate(Axis(0), &outputs).expect("every sequence's output is [T_b, C]")
    }

    /// The MLP of block `i`: `c_proj(act(c_fc(x)))`, `[T, C]` → `[T, n_inner]` → `[T, C]`.
    fn mlp(
        &self,
        i: usize,
        mlp: &Mlp,
        x: Array2<f32>,
        trace: &mut Trace,
        hooks: &Hooks<'_>,
    ) -> Array2<f32> {
        let mut hidden = conv1d(x.view(), &mlp.c_fc); // [T, n_inner]
        drop(x);
        hooks.apply(Some(i), "mlp.c_fc", &mut hidden);
        trace.record_in(i, "mlp.c_fc", hidden.view());
        self.config.activation.apply_inplace(hidden.view_mut());
        hooks.apply(Some(i), "mlp.act", &mut hidden);
        trace.record_in(i, "mlp.act", hidden.view());
        let mut out = conv1d(hidden.view(), &mlp.c_proj); // [T, C]
        hooks.apply(Some(i), "mlp.c_proj", &mut out);
        trace.record_in(i, "mlp.c_proj", out.view());
        out
    }

    /// The language-model head: `logits = x · Wᵀ`, `W` = `wte` (tied) or `lm_head`,
    /// `[T, C]` → `[T, vocab]`, applied to the output of `ln_f`. The transpose
    /// is a view: no copy of `W`, which is read in its stored dtype. Public so
    /// that tools such as the logit lens ([`crate::inspect::logit_lens`]) use
    /// the model's own head.
    pub fn head(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let w = self.lm_head.as_ref().unwrap_or(&self.wte);
        matmul_weight(x, w.stored().t()) // [T, C] · [C, vocab]
    }

    /// Reject a step the model cannot run, with a message that says why.
    pub(crate) fn check_step(
        &self,
        ids: &[u32],
        mask: Option<&[bool]>,
        cache: &KvCache,
    ) -> Result<()> {
        let cfg = &self.config;
        ensure!(!ids.is_empty(), "no tokens to run: the prompt is empty");
        if let Some((pos, &id)) = ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= cfg.vocab_size)
        {
            bail!(
                "token id {id} at position {pos} is out of range: the vocabulary has {} tokens (0..{})",
                cfg.vocab_size,
                cfg.vocab_size - 1
            );
        }
        if let Some(mask) = mask {
            ensure!(
                mask.len() == ids.len(),
                "attention mask has {} entries for {} tokens",
                mask.len(),
                ids.len()
            );
            ensure!(
                cache.real_tokens() > 0 || mask.contains(&true),
                "the sequence has no real token: its attention mask is all padding"
            );
        }
        ensure!(
            cache.layers() == cfg.n_layer,
            "the cache was made for {} layers, the model has {}",
            cache.layers(),
            cfg.n_layer
        );
        ensure!(
            cache.width() == 0 || cache.width() == cfg.n_embd,
            "the cache holds keys of width {}, the model's are {} wide",
            cache.width(),
            cfg.n_embd
        );
        let total = cache.len() + ids.len();
        ensure!(
            total <= cfg.n_positions,
            "sequence too long: {} cached + {} new = {total} positions, but the model has only \
             n_positions = {} (shorten the prompt or generate fewer tokens)",
            cache.len(),
            ids.len(),
            cfg.n_positions
        );
        Ok(())
    }

    /// Logits `[B, T, vocab]` of a padded batch: `ids` and `mask` are `[B, T]`,
    /// `mask` true at real tokens (padding left or right). The sequences go
    /// through the linear layers together, as one `[B·T, C]` matrix, and
    /// through attention each on its own; at real positions each equals the
    /// unpadded sequence's own logits, at padding positions the values are
    /// meaningless.
    pub fn forward_batch(&self, ids: &Array2<u32>, mask: &Array2<bool>) -> Result<Array3<f32>> {
        self.forward_batch_with(ids, mask, Logits::All)
    }

    /// [`Gpt2::forward_batch`] with the choice of positions for the head:
    /// `Logits::Last` gives `[B, 1, vocab]`, the next-token logits of each row
    /// (with left padding, the last position is real in every row).
    pub fn forward_batch_with(
        &self,
        ids: &Array2<u32>,
        mask: &Array2<bool>,
        logits: Logits,
    ) -> Result<Array3<f32>> {
        ensure!(
            ids.dim() == mask.dim(),
            "ids are {:?} but the attention mask is {:?}",
            ids.dim(),
            mask.dim()
        );
        let (b, t) = ids.dim();
        let mut caches: Vec<KvCache> = (0..b)
            .map(|_| KvCache::one_pass(self.config.n_layer))
            .collect();
        let mut x = Array2::zeros((b * t, self.config.n_embd)); // [B·T, C]
        for (row, ((ids, mask), cache)) in ids
            .outer_iter()
            .zip(mask.outer_iter())
            .zip(&mut caches)
            .enumerate()
        {
            let (ids, mask) = (ids.to_vec(), mask.to_vec());
            self.check_step(&ids, Some(&mask), cache)
                .map_err(|e| e.context(format!("sequence {row} of the batch")))?;
            x.slice_mut(s![row * t..(row + 1) * t, ..])
                .assign(&self.embed(&ids, Some(&mask), cache));
        }
        let mut sequences: Vec<Sequence<'_>> = caches
            .iter_mut()
            .enumerate()
            .map(|(row, cache)| Sequence {
                rows: row * t..(row + 1) * t,
                cache,
                logits: true,
            })
            .collect();
        let none = Interventions::none();
        let out = self.forward_rows(x, &mut sequences, logits, &mut Trace::off(), &none);
        let per_row = if logits == Logits::Last { 1 } else { t };
        Ok(out
            .into_shape_with_order((b, per_row, self.config.vocab_size))
            .expect("the rows of each sequence are consecutive"))
    }
}

/// `[T, C]` → `[n_head, T, d]`: the heads as a separate axis (a copy, for the trace).
fn split_heads(x: ArrayView2<f32>, n_head: usize) -> Array3<f32> {
    let (t, c) = x.dim();
    let d = c / n_head;
    let mut out = Array3::zeros((n_head, t, d));
    for (h, mut head) in out.axis_iter_mut(Axis(0)).enumerate() {
        head.assign(&x.slice(s![.., h * d..(h + 1) * d]));
    }
    out
}

/// The residual connection `x ← x + y` (`[T, C]` each), rows in parallel for
/// long prompts.
fn residual(x: &mut Array2<f32>, y: &Array2<f32>) {
    assert_eq!(x.dim(), y.dim(), "residual: the branch's shape differs");
    x.axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(y.axis_iter(Axis(0)))
        .with_min_len(64)
        .for_each(|(mut x, y)| x += &y);
}
