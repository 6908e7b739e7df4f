//! # Training: fine-tune a GPT-2 on a text, step by step as PyTorch does
//!
//! One training step, at step `k` (from 0):
//!
//! ```text
//! batch  = batch_at(tokens, k, B, T)                    inputs, targets [B, T]      data
//! L, ∂L/∂θ = loss_and_gradients(model, batch)           mean cross-entropy, backprop step
//! ‖g‖    = clip_grad_norm(∂L/∂θ, grad_clip)             global norm, tied wte once  optim
//! lr_k   = schedule.lr_at(k)                            warm-up, then cosine
//! θ      = AdamW(θ, ∂L/∂θ, lr_k)                         decoupled weight decay
//! ```
//!
//! Each part is a small public function, written to give what PyTorch gives
//! (`torch.nn.utils.clip_grad_norm_`, nanoGPT's `get_lr`, `torch.optim.AdamW`
//! with nanoGPT's parameter groups), so that a PyTorch script can replay a
//! run: `python_ref/train_ref.py` does, and `tests/train.rs` compares.
//!
//! The gradients come from [`loss_and_gradients`], the backward pass on the
//! fast kernels; the reference tier's [`crate::reference::loss_and_gradients`] states
//! the same maths plainly, and `tests/train.rs` proves the two equal.
//! [`Trainer`] runs the loop; [`save_model_dir`] writes the result as a
//! GPT-2 directory that this crate and `transformers` load.

use anyhow::{ensure, Result};
use ndarray::ArrayView2;

use crate::model::Gpt2;
use crate::reference::Gradients;

mod data;
mod optim;
mod params;
mod save;
mod step;

pub use data::{batch_at, split_validation, validation_batches, Batch};
pub use optim::{clip_grad_norm, decays, AdamW, AdamWConfig, Schedule};
pub use params::{parameters, parameters_mut};
pub use save::{check_output_dir, input_dtype, save_model_dir, COPIED_FILES};
pub use step::{loss, loss_and_gradients};

/// The settings of a run (the flags of `examples/train`).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences per step, `B`.
    pub batch: usize,
    /// Tokens per sequence, `T` (at most `n_positions`).
    pub seq: usize,
    /// The peak learning rate.
    pub lr: f64,
    /// Steps of warm-up (fewer than `steps`).
    pub warmup: usize,
    /// The global gradient norm is clipped to this; 0 turns clipping off.
    pub grad_clip: f32,
    /// AdamW's betas, `ε` and weight decay.
    pub adamw: AdamWConfig,
    /// Measure the loss on the last 10% of the tokens (then not trained on)
    /// every this many steps.
    pub val_every: Option<usize>,
}

impl TrainConfig {
    /// An error naming the first setting that cannot run on `model`.
    pub fn validate(&self, model: &Gpt2) -> Result<()> {
        ensure!(self.steps >= 1, "--steps must be at least 1");
        ensure!(self.batch >= 1, "--batch must be at least 1");
        ensure!(self.seq >= 1, "--seq must be at least 1");
        ensure!(
            self.seq <= model.config.n_positions,
            "--seq {} is longer than the model's n_positions = {}",
            self.seq,
            model.config.n_positions
        );
        Schedule::new(self.lr, self.warmup, self.steps)?;
        ensure!(
            self.grad_clip.is_finite() && self.grad_clip >= 0.0,
            "--grad-clip must be a finite number ≥ 0 (0: no clipping), got {}",
            self.grad_clip
        );
        ensure!(self.val_every != Some(0), "--val-every must be at least 1");
        self.adamw.validate()
    }
}

/// What step `k` logs: the loss before the update, the rate it used, and the
/// gradients' global norm before clipping.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLog {
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f32,
}

/// One optimiser step on `batch` at rate `lr`, with the gradients from
/// `gradients` (the fast [`loss_and_gradients`], or the reference tier's):
/// loss and gradients with the parameters as they are, clip (unless
/// `grad_clip` is 0), then AdamW. Returns the loss and the norm before clipping.
pub fn step_with(
    model: &mut Gpt2,
    opt: &mut AdamW,
    batch: &Batch,
    lr: f64,
    grad_clip: f32,
    gradients: impl FnOnce(&Gpt2, ArrayView2<u32>, ArrayView2<u32>) -> Result<(f32, Gradients)>,
) -> Result<(f32, f32)> {
    let (loss, mut grads) = gradients(model, batch.inputs.view(), batch.targets.view())?;
    let grad_norm = if grad_clip > 0.0 {
        clip_grad_norm(&mut grads, grad_clip)
    } else {
        clip_grad_norm(&mut grads, f32::INFINITY)
    };
    opt.step(model, &grads, lr);
    Ok((loss, grad_norm))
}

/// A training run: the model, its optimiser, the schedule and the tokens.
pub struct Trainer {
    pub model: Gpt2,
    pub optimizer: AdamW,
    pub schedule: Schedule,
    pub config: TrainConfig,
    train: Vec<u32>,
    validation: Vec<Batch>,
    next: usize,
}

impl Trainer {
    /// A run of `config` on `tokens` (the whole text, tokenized). Errors:
    /// every setting [`TrainConfig::validate`] refuses, a text too short for
    /// one sequence and its targets (`T + 2` tokens to train on; with
    /// validation, also `T + 1` in its last 10%).
    pub fn new(model: Gpt2, tokens: &[u32], config: TrainConfig) -> Result<Self> {
        config.validate(&model)?;
        ensure!(
            !tokens.is_empty(),
            "the text is empty: no tokens to train on"
        );
        let (train, val) = match config.val_every {
            Some(_) => split_validation(tokens),
            None => (tokens, &tokens[tokens.len()..]),
        };
        // The first batch checks the length (and the ids, below).
        batch_at(train, 0, config.batch, config.seq)?;
        let validation = match config.val_every {
            Some(_) => validation_batches(val, config.batch, config.seq)?,
            None => Vec::new(),
        };
        let vocab = model.config.vocab_size;
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= vocab) {
            anyhow::bail!("token id {id} is outside the model's vocabulary of {vocab}");
        }
        let optimizer = AdamW::new(&model, config.adamw)?;
        let schedule = Schedule::new(config.lr, config.warmup, config.steps)?;
        Ok(Trainer {
            model,
            optimizer,
            schedule,
            config,
            train: train.to_vec(),
            validation,
            next: 0,
        })
    }

    /// Steps taken so far.
    pub fn steps_done(&self) -> usize {
        self.next
    }

    /// The number of tokens trained on (the first 90% with validation).
    pub fn train_tokens(&self) -> usize {
        self.train.len()
    }

    /// Whether the loss on the validation tokens is due before step `k`
    /// (every `val_every` steps from 0), or after the last (`k = steps`).
    pub fn validation_due(&self, k: usize) -> bool {
        match self.config.val_every {
            Some(every) => k.is_multiple_of(every) || k == self.config.steps,
            None => false,
        }
    }

    /// The next step of the run (an error after the last).
    pub fn step(&mut self) -> Result<StepLog> {
        let k = self.next;
        ensure!(k < self.config.steps, "the run's {} steps are done", k);
        let batch = batch_at(&self.train, k, self.config.batch, self.config.seq)?;
        let lr = self.schedule.lr_at(k);
        let (loss, grad_norm) = step_with(
            &mut self.model,
            &mut self.optimizer,
            &batch,
            lr,
            self.config.grad_clip,
            loss_and_gradients,
        )?;
        self.next += 1;
        Ok(StepLog {
            step: k,
            loss,
            lr,
            grad_norm,
        })
    }

    /// The mean cross-entropy over every target of the validation tokens
    /// (`None` without validation).
    pub fn validation_loss(&self) -> Result<Option<f32>> {
        if self.validation.is_empty() {
            return Ok(None);
        }
        let (mut total, mut count) = (0.0f64, 0usize);
        for b in &self.validation {
            let n = b.targets.len();
            total += f64::from(loss(&self.model, b.inputs.view(), b.targets.view())?) * n as f64;
            count += n;
        }
        Ok(Some((total / count as f64) as f32))
    }
}
