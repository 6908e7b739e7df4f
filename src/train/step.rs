//! The training step on the fast kernels: a forward pass that keeps what the
//! backward pass needs, the cross-entropy loss, and the backward pass. It
//! computes what the reference tier's [`crate::reference::loss_and_gradients`] computes
//! (the chain rule of each box is written out there, plainly, beside its
//! forward); here every product is the crate's GEMM on the thread pool, and
//! the sequences and heads of attention run in parallel. `tests/train.rs`
//! proves the two equal, and both equal to PyTorch.

use anyhow::{ensure, Result};
use ndarray::{s, Array1, Array2, Array3, ArrayView2, ArrayViewMut2, Axis, Zip};
use rayon::prelude::*;

use crate::config::Activation;
use crate::kernels::fastmath::{
    exp_sum, max_lanes, scale, sigmoid, sum_lanes, sum_squared_deviations,
};
use crate::kernels::gemm::{product, Output, Threads};
use crate::kernels::{attend, conv1d, matmul};
use crate::model::{Block, Gpt2};
#[cfg(doc)]
use crate::reference;
use crate::reference::{BlockGradients, Conv1DGradients, Gradients, LayerNormGradients};
use crate::weights::{Conv1D, LayerNorm};

/// What a layer norm's backward needs: `x̂ = (x − μ)/σ` `[N, C]` and `1/σ` `[N]`.
struct NormSaved {
    xhat: Array2<f32>,
    rstd: Array1<f32>,
}

/// What one block's backward needs from its forward.
struct BlockSaved {
    ln_1: NormSaved,
    /// `ln_1(x)`, the input of `c_attn`: `[N, C]`.
    a: Array2<f32>,
    /// `q | k | v`: `[N, 3C]`.
    qkv: Array2<f32>,
    /// The attention probabilities of each sequence: `[n_head, T, T]` each.
    probs: Vec<Array3<f32>>,
    /// The heads merged, the input of `attn.c_proj`: `[N, C]`.
    merged: Array2<f32>,
    ln_2: NormSaved,
    /// `ln_2(x)`, the input of `c_fc`: `[N, C]`.
    m: Array2<f32>,
    /// `c_fc(m)` before the activation: `[N, n_inner]`.
    pre: Array2<f32>,
    /// The activation, the input of `mlp.c_proj`: `[N, n_inner]`.
    act: Array2<f32>,
}

/// The forward pass, kept for the backward.
struct Forward {
    blocks: Vec<BlockSaved>,
    ln_f: NormSaved,
    /// `ln_f(x)`, the input of the head: `[N, C]`.
    out: Array2<f32>,
}

fn check(model: &Gpt2, inputs: ArrayView2<u32>, targets: ArrayView2<u32>) -> Result<()> {
    let cfg = &model.config;
    let (b, t) = inputs.dim();
    ensure!(
        targets.dim() == (b, t),
        "inputs are [{b}, {t}] but targets are {:?}",
        targets.dim()
    );
    ensure!(b >= 1 && t >= 1, "an empty batch: [{b}, {t}]");
    ensure!(
        t <= cfg.n_positions,
        "sequences of {t} tokens are longer than the model's n_positions = {}",
        cfg.n_positions
    );
    for (what, ids) in [("input", inputs.view()), ("target", targets.view())] {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            anyhow::bail!(
                "{what} token id {id} is out of range: the vocabulary has {} tokens",
                cfg.vocab_size
            );
        }
    }
    Ok(())
}

/// The mean cross-entropy of predicting `targets` from `inputs` (`[B, T]`
/// each), the fast forward pass alone (validation).
pub fn loss(model: &Gpt2, inputs: ArrayView2<u32>, targets: ArrayView2<u32>) -> Result<f32> {
    check(model, inputs, targets)?;
    let model = &*model.upcast(); // half-precision weights: computed in f32
    let fwd = rayon::scope(|_| forward(model, inputs));
    let mut logits = model.head(fwd.out.view()); // [N, vocab]
    Ok(cross_entropy(logits.view_mut(), targets))
}

/// The loss `L` (mean cross-entropy over the `B·T` targets) and `∂L/∂θ` for
/// every parameter, on the fast kernels. Shapes: `inputs`, `targets`:
/// `[B, T]`. Errors: a shape mismatch, `T > n_positions`, an id outside the
/// vocabulary. Weights stored in half precision are upcast to `f32` first
/// (the gradients are `f32`, as the parameters a [`crate::train::Trainer`] updates).
///
/// Runs on the current rayon pool; the result does not depend on its number
/// of threads.
pub fn loss_and_gradients(
    model: &Gpt2,
    inputs: ArrayView2<u32>,
    targets: ArrayView2<u32>,
) -> Result<(f32, Gradients)> {
    check(model, inputs, targets)?;
    let model = &*model.upcast(); // half-precision weights: computed in f32
    Ok(rayon::scope(|_| {
        let fwd = forward(model, inputs);
        backward(model, inputs, targets, fwd)
    }))
}

/// The forward pass of `[B, T]` sequences as `N = B·T` stacked rows.
fn forward(model: &Gpt2, inputs: ArrayView2<u32>) -> Forward {
    let (b, t) = inputs.dim();
    let c = model.config.n_embd;
    let (wte, wpe) = (model.wte.view(), model.wpe.view());
    let mut x = Array2::zeros((b * t, c)); // [N, C]
    for (n, mut row) in x.rows_mut().into_iter().enumerate() {
        row.assign(&wte.row(inputs[[n / t, n % t]] as usize));
        row += &wpe.row(n % t);
    }
    let mut blocks = Vec::with_capacity(model.h.len());
    for (i, h) in model.h.iter().enumerate() {
        let (out, saved) = block_forward(model, i, h, x, b, t);
        blocks.push(saved);
        x = out;
    }
    let (out, ln_f) = layer_norm(x.view(), &model.ln_f);
    Forward { blocks, ln_f, out }
}

fn block_forward(
    model: &Gpt2,
    i: usize,
    h: &Block,
    mut x: Array2<f32>,
    b: usize,
    t: usize,
) -> (Array2<f32>, BlockSaved) {
    let cfg = &model.config;
    let c = cfg.n_embd;
    let (a, ln_1) = layer_norm(x.view(), &h.ln_1);
    let qkv = conv1d(a.view(), &h.attn.c_attn); // [N, 3C]
    let scale = cfg.attention_scale(i);
    let heads: Vec<(Array2<f32>, Array3<f32>)> = (0..b)
        .into_par_iter()
        .map(|r| {
            let rows = qkv.slice(s![r * t..(r + 1) * t, ..]);
            let (q, k, v) = (
                rows.slice(s![.., ..c]),
                rows.slice(s![.., c..2 * c]),
                rows.slice(s![.., 2 * c..]),
            );
            let (merged, maps) = attend(q, k, v, cfg.n_head, scale, None, true);
            (merged, maps.expect("asked for the maps").probs)
        })
        .collect();
    let merged_views: Vec<ArrayView2<f32>> = heads.iter().map(|(m, _)| m.view()).collect();
    let merged = ndarray::concatenate(Axis(0), &merged_views).expect("[T, C] each"); // [N, C]
    let probs = heads.into_iter().map(|(_, p)| p).collect();
    x += &conv1d(merged.view(), &h.attn.c_proj);
    let (m, ln_2) = layer_norm(x.view(), &h.ln_2);
    let pre = conv1d(m.view(), &h.mlp.c_fc); // [N, n_inner]
    let mut act = pre.clone();
    cfg.activation.apply_inplace(act.view_mut());
    x += &conv1d(act.view(), &h.mlp.c_proj);
    let saved = BlockSaved {
        ln_1,
        a,
        qkv,
        probs,
        merged,
        ln_2,
        m,
        pre,
        act,
    };
    (x, saved)
}

/// Layer norm of each row, keeping `x̂` and `1/σ`: `[N, C]` → `[N, C]`.
fn layer_norm(x: ArrayView2<f32>, ln: &LayerNorm) -> (Array2<f32>, NormSaved) {
    let (n, c) = x.dim();
    let mut y = Array2::zeros((n, c));
    let mut xhat = Array2::zeros((n, c));
    let mut rstd = Array1::zeros(n);
    Zip::from(y.rows_mut())
        .and(xhat.rows_mut())
        .and(&mut rstd)
        .and(x.rows())
        .par_for_each(|mut y, mut xhat, rstd, x| {
            let x = x.as_standard_layout();
            let x = x.as_slice().expect("standard layout");
            let mu = sum_lanes(x) / c as f32;
            let var = sum_squared_deviations(x, mu) / c as f32;
            *rstd = 1.0 / (var + ln.eps).sqrt();
            Zip::from(&mut y)
                .and(&mut xhat)
                .and(x)
                .and(&ln.weight)
                .and(&ln.bias)
                .for_each(|y, xh, &x, &g, &b| {
                    *xh = (x - mu) * *rstd;
                    *y = *xh * g + b;
                });
        });
    (y, NormSaved { xhat, rstd })
}

/// The backward of [`layer_norm`]: from `∂L/∂y` `[N, C]`, the gain's and
/// bias's gradients and `∂L/∂x`, added into `dx`:
/// `∂L/∂x = (1/σ)(ĝ − mean(ĝ) − x̂·mean(ĝ∘x̂))`, `ĝ = ∂L/∂y ∘ γ`;
/// `∂L/∂γ = Σ_rows ∂L/∂y ∘ x̂`, `∂L/∂β = Σ_rows ∂L/∂y`.
fn layer_norm_backward(
    dy: ArrayView2<f32>,
    saved: &NormSaved,
    ln: &LayerNorm,
    mut dx: ArrayViewMut2<f32>,
) -> LayerNormGradients {
    let c = dy.ncols() as f32;
    let weight = column_sums(&(&dy * &saved.xhat));
    let bias = column_sums(&dy.to_owned());
    Zip::from(dx.rows_mut())
        .and(dy.rows())
        .and(saved.xhat.rows())
        .and(&saved.rstd)
        .par_for_each(|mut dx, dy, xhat, &rstd| {
            let (mut mean_g, mut mean_gx) = (0.0f32, 0.0f32);
            Zip::from(dy)
                .and(xhat)
                .and(&ln.weight)
                .for_each(|&d, &xh, &g| {
                    mean_g += d * g;
                    mean_gx += d * g * xh;
                });
            mean_g /= c;
            mean_gx /= c;
            Zip::from(&mut dx)
                .and(dy)
                .and(xhat)
                .and(&ln.weight)
                .for_each(|dx, &d, &xh, &g| *dx += rstd * (d * g - mean_g - xh * mean_gx));
        });
    LayerNormGradients { weight, bias }
}

/// `Σ_rows x`: `[N, n]` → `[n]`, in row blocks on the pool.
fn column_sums(x: &Array2<f32>) -> Array1<f32> {
    x.axis_chunks_iter(Axis(0), 256)
        .into_par_iter()
        .map(|rows| rows.sum_axis(Axis(0)))
        .reduce_with(|a, b| a + b)
        .unwrap_or_else(|| Array1::zeros(x.ncols()))
}

/// The backward of a `Conv1D` `y = x·W + b`: `∂L/∂W = xᵀ·∂L/∂y`,
/// `∂L/∂b = Σ_rows ∂L/∂y`, and `∂L/∂x = ∂L/∂y · Wᵀ` returned.
fn conv1d_backward(
    x: ArrayView2<f32>,
    dy: &Array2<f32>,
    layer: &Conv1D,
) -> (Conv1DGradients, Array2<f32>) {
    let weight = matmul(x.t(), dy.view()); // [in, N] · [N, out]
    let bias = column_sums(dy);
    let dx = matmul(dy.view(), layer.weight.view().t()); // [N, out] · [out, in]
    (Conv1DGradients { weight, bias }, dx)
}

/// `∂L/∂x = ∂L/∂y ∘ f′(x)` for the MLP's activation `f`, in place on `dy`:
/// the twin of [`reference::activation_backward`]. Each derivative is a
/// closure the compiler inlines into the loop (the GELUs' through the
/// kernels' vectorisable `exp`).
fn activation_backward(act: Activation, pre: &Array2<f32>, dy: &mut Array2<f32>) {
    fn apply(pre: &Array2<f32>, dy: &mut Array2<f32>, f: impl Fn(f32) -> f32 + Sync) {
        Zip::from(dy).and(pre).par_for_each(|d, &x| *d *= f(x));
    }
    match act {
        Activation::GeluNew | Activation::GeluFast => apply(pre, dy, gelu_tanh_derivative),
        Activation::Gelu => apply(pre, dy, gelu_derivative),
        Activation::QuickGelu => apply(pre, dy, |x| {
            let s = sigmoid(1.702 * x);
            s + x * 1.702 * s * (1.0 - s)
        }),
        Activation::Relu => apply(pre, dy, |x| if x > 0.0 { 1.0 } else { 0.0 }),
        Activation::Silu => apply(pre, dy, |x| {
            let s = sigmoid(x);
            s * (1.0 + x * (1.0 - s))
        }),
    }
}

/// The derivative of the tanh GELU `½x(1 + tanh(u)) = x·σ(2u)`,
/// `u = √(2/π)(x + 0.044715x³)`: `σ(2u) + x·σ(2u)(1 − σ(2u))·2u′`,
/// `u′ = √(2/π)(1 + 3·0.044715x²)`.
#[inline(always)]
fn gelu_tanh_derivative(x: f32) -> f32 {
    const K: f32 = 0.797_884_6;
    let s = sigmoid(2.0 * K * (x + 0.044715 * x * x * x));
    s + x * s * (1.0 - s) * 2.0 * K * (1.0 + 3.0 * 0.044715 * x * x)
}

/// `d/dx x·Φ(x) = Φ(x) + x·φ(x)`.
fn gelu_derivative(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = (-0.5 * x * x).exp() * 0.398_942_3; // 1/√(2π)
    cdf + x * pdf
}

/// The mean cross-entropy of each row's `targets` under `softmax(logits)`,
/// and, in place of the logits, its gradient `∂L/∂logits = (softmax − onehot) / N`.
fn cross_entropy(mut logits: ArrayViewMut2<f32>, targets: ArrayView2<u32>) -> f32 {
    let n = logits.nrows();
    let targets: Vec<u32> = targets.iter().copied().collect();
    let total: f64 = logits
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(targets.par_iter())
        .map(|(mut row, &target)| {
            let row = row.as_slice_mut().expect("logits are row-major");
            let m = max_lanes(row);
            let z = row[target as usize];
            let sum = exp_sum(row, m); // row = exp(logits − m)
            scale(row, 1.0 / (sum * n as f32));
            row[target as usize] -= 1.0 / n as f32;
            f64::from(sum.ln() + m - z) // −log softmax(logits)[target]
        })
        .sum();
    (total / n as f64) as f32
}

/// The backward pass, from the loss back to the embeddings.
fn backward(
    model: &Gpt2,
    inputs: ArrayView2<u32>,
    targets: ArrayView2<u32>,
    fwd: Forward,
) -> (f32, Gradients) {
    let (b, t) = inputs.dim();
    let head = model.lm_head.as_ref().unwrap_or(&model.wte).view(); // [vocab, C]
    let mut dlogits = model.head(fwd.out.view()); // logits [N, vocab]
    let loss = cross_entropy(dlogits.view_mut(), targets); // now ∂L/∂logits
    let dhead = matmul(dlogits.t(), fwd.out.view()); // [vocab, N] · [N, C]
    let dout = matmul(dlogits.view(), head); // [N, vocab] · [vocab, C]
    drop(dlogits);

    let mut dx = Array2::zeros(dout.raw_dim()); // ∂L/∂(residual stream) [N, C]
    let ln_f = layer_norm_backward(dout.view(), &fwd.ln_f, &model.ln_f, dx.view_mut());
    let mut blocks = Vec::with_capacity(model.h.len());
    for (i, (h, saved)) in model.h.iter().zip(fwd.blocks).enumerate().rev() {
        blocks.push(block_backward(model, i, h, saved, &mut dx, b, t));
    }
    blocks.reverse();

    // Embeddings: each row's gradient goes to its token's and its position's rows.
    let mut wte = match model.lm_head {
        Some(_) => Array2::zeros(model.wte.dim()),
        None => dhead.clone(),
    };
    let mut wpe = Array2::zeros(model.wpe.dim());
    for (n, row) in dx.rows().into_iter().enumerate() {
        let mut w = wte.row_mut(inputs[[n / t, n % t]] as usize);
        w += &row;
        let mut p = wpe.row_mut(n % t);
        p += &row;
    }
    let grads = Gradients {
        wte,
        wpe,
        h: blocks,
        ln_f,
        lm_head: model.lm_head.as_ref().map(|_| dhead),
    };
    (loss, grads)
}

/// One block's backward: `dx` (`∂L/∂` its output, `[N, C]`) becomes `∂L/∂` its input.
fn block_backward(
    model: &Gpt2,
    i: usize,
    h: &Block,
    saved: BlockSaved,
    dx: &mut Array2<f32>,
    b: usize,
    t: usize,
) -> BlockGradients {
    let cfg = &model.config;
    // x = x + c_proj(act(c_fc(ln_2(x)))): the residual passes dx through.
    let (mlp_c_proj, mut dact) = conv1d_backward(saved.act.view(), dx, &h.mlp.c_proj);
    activation_backward(cfg.activation, &saved.pre, &mut dact);
    let (c_fc, dm) = conv1d_backward(saved.m.view(), &dact, &h.mlp.c_fc);
    drop(dact);
    let ln_2 = layer_norm_backward(dm.view(), &saved.ln_2, &h.ln_2, dx.view_mut());

    // x = x + c_proj(attn(ln_1(x))).
    let (attn_c_proj, dmerged) = conv1d_backward(saved.merged.view(), dx, &h.attn.c_proj);
    let dqkv = attention_backward(
        saved.qkv.view(),
        &saved.probs,
        dmerged.view(),
        cfg.n_head,
        cfg.attention_scale(i),
        b,
        t,
    );
    let (c_attn, da) = conv1d_backward(saved.a.view(), &dqkv, &h.attn.c_attn);
    let ln_1 = layer_norm_backward(da.view(), &saved.ln_1, &h.ln_1, dx.view_mut());
    BlockGradients {
        ln_1,
        c_attn,
        attn_c_proj,
        ln_2,
        c_fc,
        mlp_c_proj,
    }
}

/// `a · b` on the calling thread (one of many tasks already in parallel).
fn mm(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
    let mut c = Array2::zeros((a.nrows(), b.ncols()));
    product(a, b, c.view_mut(), Output::Overwrite, Threads::Caller);
    c
}

/// The backward of causal attention for every sequence and head, in
/// parallel: from `∂L/∂merged` `[N, C]` to `∂L/∂(q | k | v)` `[N, 3C]`.
/// Per head, with `P` its probabilities and `O = P·v`:
/// `∂v = Pᵀ·∂O`, `∂P = ∂O·vᵀ`, `∂S = P ∘ (∂P − rowsum(P ∘ ∂P))` (the softmax's
/// backward; masked entries have `P = 0`), and with the scores `S = scale·q·kᵀ`:
/// `∂q = scale·∂S·k`, `∂k = scale·∂Sᵀ·q`.
fn attention_backward(
    qkv: ArrayView2<f32>,
    probs: &[Array3<f32>],
    dmerged: ArrayView2<f32>,
    n_head: usize,
    scale: f32,
    b: usize,
    t: usize,
) -> Array2<f32> {
    let c = dmerged.ncols();
    let d = c / n_head;
    let parts: Vec<(usize, usize, [Array2<f32>; 3])> = (0..b * n_head)
        .into_par_iter()
        .map(|job| {
            let (r, hd) = (job / n_head, job % n_head);
            let rows = s![r * t..(r + 1) * t, ..];
            let cols = |j: usize| s![.., j * c + hd * d..j * c + (hd + 1) * d];
            let seq = qkv.slice(rows);
            let (q, k, v) = (seq.slice(cols(0)), seq.slice(cols(1)), seq.slice(cols(2)));
            let dout = dmerged.slice(rows);
            let dout = dout.slice(s![.., hd * d..(hd + 1) * d]); // [T, d]
            let p = probs[r].index_axis(Axis(0), hd); // [T, T]
            let dv = mm(p.t(), dout); // [T, T] · [T, d]
            let mut ds = mm(dout, v.t()); // ∂P [T, T]
            Zip::from(ds.rows_mut())
                .and(p.rows())
                .for_each(|mut ds, p| {
                    let dot: f32 = ds.iter().zip(p).map(|(a, b)| a * b).sum();
                    Zip::from(&mut ds)
                        .and(p)
                        .for_each(|ds, &p| *ds = scale * p * (*ds - dot));
                });
            let dq = mm(ds.view(), k); // [T, T] · [T, d]
            let dk = mm(ds.t(), q);
            (r, hd, [dq, dk, dv])
        })
        .collect();
    let mut dqkv = Array2::zeros((b * t, 3 * c));
    for (r, hd, grads) in parts {
        for (j, g) in grads.iter().enumerate() {
            dqkv.slice_mut(s![r * t..(r + 1) * t, j * c + hd * d..j * c + (hd + 1) * d])
                .assign(g);
        }
    }
    dqkv
}
