//! The optimiser step: global-norm clipping, the learning-rate schedule and
//! AdamW, each written to give what PyTorch gives.

use anyhow::{ensure, Result};
use ndarray::Zip;
use rayon::prelude::*;

use super::params::parameters_mut;
use crate::model::Gpt2;
use crate::reference::Gradients;

/// The squared L2 norm of every gradient together, `Σ_θ Σᵢ gᵢ²`, summed in
/// `f64`; a tied `wte` is one parameter and is counted once.
fn squared_norm(grads: &Gradients) -> f64 {
    grads
        .named()
        .par_iter()
        .map(|(_, g)| g.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>())
        .sum()
}

/// `torch.nn.utils.clip_grad_norm_(parameters, max_norm)`: the global norm
/// `‖g‖ = √(Σ_θ ‖g_θ‖²)` over every parameter's gradient (the tied `wte`
/// once), and every gradient multiplied by `min(1, max_norm / (‖g‖ + 1e-6))`.
/// Returns `‖g‖` before clipping, as torch does. The factor is computed in
/// `f32`, as torch computes it from its `f32` norm.
pub fn clip_grad_norm(grads: &mut Gradients, max_norm: f32) -> f32 {
    let norm = squared_norm(grads).sqrt() as f32;
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    if coef < 1.0 {
        for (_, mut g) in grads.named_mut() {
            g.par_mapv_inplace(|v| v * coef);
        }
    }
    norm
}

/// nanoGPT's learning-rate schedule: a linear warm-up, then a cosine decay
/// from `lr` to `min_lr = lr / 10` at the last step.
///
/// ```text
/// lr_k = lr · (k + 1) / (warmup + 1)                                      k < warmup
/// lr_k = min_lr + ½ (1 + cos(π · (k − warmup) / (steps − warmup))) · (lr − min_lr)   otherwise
/// ```
///
/// `k` counts from 0; nanoGPT's `lr_decay_iters` is `steps` here.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// The peak rate, reached at the end of the warm-up.
    pub lr: f64,
    /// Steps of linear warm-up.
    pub warmup: usize,
    /// Steps of the whole run.
    pub steps: usize,
}

impl Schedule {
    /// A schedule; an error unless `lr ≥ 0` (finite) and `warmup < steps`.
    pub fn new(lr: f64, warmup: usize, steps: usize) -> Result<Self> {
        ensure!(
            lr.is_finite() && lr >= 0.0,
            "the learning rate must be a finite number ≥ 0, got {lr}"
        );
        ensure!(steps > 0, "the number of steps must be at least 1");
        ensure!(
            warmup < steps,
            "the warm-up ({warmup} steps) must be shorter than the run ({steps} steps)"
        );
        Ok(Schedule { lr, warmup, steps })
    }

    /// `lr / 10`, where the cosine ends.
    pub fn min_lr(&self) -> f64 {
        self.lr / 10.0
    }

    /// The rate of step `k` (from 0).
    pub fn lr_at(&self, k: usize) -> f64 {
        if k < self.warmup {
            return self.lr * (k + 1) as f64 / (self.warmup + 1) as f64;
        }
        if k > self.steps {
            return self.min_lr();
        }
        let decay = (k - self.warmup) as f64 / (self.steps - self.warmup) as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * decay).cos());
        self.min_lr() + coeff * (self.lr - self.min_lr())
    }
}

/// AdamW's hyper-parameters (`torch.optim.AdamW`'s, with its default betas and `ε`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// `β₁`, the decay of the first moment (0.9).
    pub beta1: f64,
    /// `β₂`, the decay of the second moment (0.999).
    pub beta2: f64,
    /// `ε`, added to `√v̂` (1e-8).
    pub eps: f64,
    /// `λ`, the decoupled weight decay of the parameters that decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// An error unless `0 ≤ β < 1`, `ε > 0` and `λ ≥ 0`, all finite (torch's checks).
    pub fn validate(&self) -> Result<()> {
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            ensure!((0.0..1.0).contains(&b), "{name} must be in [0, 1), got {b}");
        }
        ensure!(
            self.eps.is_finite() && self.eps > 0.0,
            "eps must be a finite number > 0, got {}",
            self.eps
        );
        ensure!(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "the weight decay must be a finite number ≥ 0, got {}",
            self.weight_decay
        );
        Ok(())
    }
}

/// Whether a parameter decays: nanoGPT's groups, every parameter of two or
/// more dimensions (`wte`, `wpe`, each `Conv1D` weight, an untied `lm_head`)
/// and none of the biases and layer-norm gains.
pub fn decays(ndim: usize) -> bool {
    ndim >= 2
}

/// `torch.optim.AdamW`: per parameter `θ` with gradient `g`, at step `t`
/// (from 1),
///
/// ```text
/// θ ← θ · (1 − lr·λ)                       decoupled weight decay (λ = 0 for biases, layer norms)
/// m ← m + (1 − β₁)(g − m)                   first moment  (torch's lerp)
/// v ← β₂·v + (1 − β₂)·g²                    second moment
/// θ ← θ − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
/// ```
///
/// in that order and with the same rounding steps as torch's single-tensor
/// implementation (the scalars in `f64`, then used as `f32`).
#[derive(Clone, Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken so far.
    pub t: u64,
    /// The first moment of every parameter, shaped as the model.
    pub m: Gradients,
    /// The second moment.
    pub v: Gradients,
}

impl AdamW {
    /// The optimiser of `model`'s parameters, its moments all zero.
    pub fn new(model: &Gpt2, config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        Ok(AdamW {
            config,
            t: 0,
            m: Gradients::zeros_like(model),
            v: Gradients::zeros_like(model),
        })
    }

    /// One step at rate `lr`: update every parameter of `model` from `grads`.
    pub fn step(&mut self, model: &mut Gpt2, grads: &Gradients, lr: f64) {
        self.t += 1;
        let c = self.config;
        let t = self.t as i32;
        let step_size = (lr / (1.0 - c.beta1.powi(t))) as f32;
        let bias2_sqrt = ((1.0 - c.beta2.powi(t)).sqrt()) as f32;
        let (one_minus_b1, b2, one_minus_b2) = (
            (1.0 - c.beta1) as f32,
            c.beta2 as f32,
            (1.0 - c.beta2) as f32,
        );
        let eps = c.eps as f32;
        let params = parameters_mut(model);
        let grads = grads.named();
        let (m, v) = (self.m.named_mut(), self.v.named_mut());
        assert_eq!(params.len(), grads.len(), "a gradient per parameter");
        for (((name, p), (gname, g)), ((_, m), (_, v))) in
            params.into_iter().zip(grads).zip(m.into_iter().zip(v))
        {
            debug_assert_eq!(name, gname, "parameters and gradients in the same order");
            assert_eq!(
                p.shape(),
                g.shape(),
                "the gradient of {name} has the wrong shape"
            );
            let decay = if decays(p.ndim()) {
                (1.0 - lr * c.weight_decay) as f32
            } else {
                1.0
            };
            Zip::from(p)
                .and(&g)
                .and(m)
                .and(v)
                .par_for_each(|p, &g, m, v| {
                    *p *= decay; // θ·(1 − lr·λ)
                    *m = one_minus_b1.mul_add(g - *m, *m); // m + (1−β₁)(g − m)
                    *v = *v * b2 + one_minus_b2 * g * g; // β₂v + (1−β₂)g²
                    let denom = v.sqrt() / bias2_sqrt + eps;
                    *p += -step_size * *m / denom;
                });
        }
    }
}
