//! The whole model: embedding, blocks, final layer norm, head — and every step on the way;
//! then the backward of each, and of the whole model ([`loss_and_gradients`]).

use ndarray::{concatenate, s, Array2, ArrayD, ArrayView2, ArrayViewMut2, Axis, Dimension};

use super::{
    activation, activation_backward, causal_self_attention, causal_self_attention_backward, conv1d,
    conv1d_backward, cross_entropy, cross_entropy_backward, layer_norm, layer_norm_backward,
    matmul, Activation, AttentionSteps, Block, BlockGradients, Config, Conv1DGradients, Gpt2,
    Gradients, Mlp,
};

/// Token plus position embedding: row `t` is `wte[ids[t]] + wpe[t]`.
/// Shapes: `wte: [vocab, C]`, `wpe: [n_positions, C]`, `ids: [T]` → `[T, C]`.
pub fn embedding(wte: ArrayView2<f32>, wpe: ArrayView2<f32>, ids: &[u32]) -> Array2<f32> {
    let mut x = Array2::zeros((ids.len(), wte.ncols()));
    for (t, (mut row, &id)) in x.rows_mut().into_iter().zip(ids).enumerate() {
        row.assign(&(&wte.row(id as usize) + &wpe.row(t)));
    }
    x
}

/// The MLP's steps: `c_fc` `[T, n_inner]`, the activation `[T, n_inner]`, `c_proj` `[T, C]`.
#[derive(Clone, Debug)]
pub struct MlpSteps {
    pub c_fc: Array2<f32>,
    pub act: Array2<f32>,
    pub c_proj: Array2<f32>,
}

/// The feed-forward network (`GPT2MLP`): `c_proj(act(c_fc(x)))`, each
/// position on its own. Shapes: `[T, C]` → `[T, n_inner]` → `[T, C]`.
pub fn mlp(act: Activation, mlp: &Mlp, x: ArrayView2<f32>) -> MlpSteps {
    let c_fc = conv1d(x, &mlp.c_fc); // [T, n_inner]
    let act = activation(act, c_fc.view());
    let c_proj = conv1d(act.view(), &mlp.c_proj); // [T, C]
    MlpSteps { c_fc, act, c_proj }
}

/// The steps of one block, named as in the trace table.
#[derive(Clone, Debug)]
pub struct BlockSteps {
    pub ln_1: Array2<f32>,
    pub attn: AttentionSteps,
    pub resid_1: Array2<f32>,
    pub ln_2: Array2<f32>,
    pub mlp: MlpSteps,
    /// The residual stream leaving the block: `[T, C]`.
    pub out: Array2<f32>,
}

/// One transformer block (`GPT2Block`) in position `layer`: attention, then
/// the MLP, each reading a layer-normed copy of the residual stream and adding
/// its result back to it. Shapes: `[T, C]` → `[T, C]`.
pub fn block(config: &Config, layer: usize, h: &Block, x: ArrayView2<f32>) -> BlockSteps {
    let ln_1 = layer_norm(x, &h.ln_1);
    let attn = causal_self_attention(config, layer, &h.attn, ln_1.view());
    let resid_1 = &x + &attn.c_proj; // x = x + attn(ln_1(x))
    let ln_2 = layer_norm(resid_1.view(), &h.ln_2);
    let mlp = mlp(config.activation, &h.mlp, ln_2.view());
    let out = &resid_1 + &mlp.c_proj; // x = x + mlp(ln_2(x))
    BlockSteps {
        ln_1,
        attn,
        resid_1,
        ln_2,
        mlp,
        out,
    }
}

/// The language-model head: `logits = x · Wᵀ`, `W` = `lm_head` if the model
/// has its own, else `wte` (GPT-2 ties them: the same matrix turns a token
/// into a vector and a vector into a score per token).
/// Shapes: `x: [T, C]`, `W: [vocab, C]` → `[T, vocab]`.
pub fn head<'w>(
    x: ArrayView2<f32>,
    wte: ArrayView2<'w, f32>,
    lm_head: Option<ArrayView2<'w, f32>>,
) -> Array2<f32> {
    matmul(x, lm_head.unwrap_or(wte).t()) // [T, C] · [C, vocab]
}

/// The steps of a [`forward_steps`] pass over one sequence, typed: what the
/// backward pass reads ([`backward`]). [`forward`] records the same steps by name.
#[derive(Clone, Debug)]
pub struct ModelSteps {
    /// The token ids `[T]`.
    pub ids: Vec<u32>,
    /// `wte[ids] + wpe[0..T]`: `[T, C]`.
    pub embed: Array2<f32>,
    /// Each block's steps; block `i`'s input is `h[i - 1].out` (`embed` for block 0).
    pub h: Vec<BlockSteps>,
    /// The final layer norm's output: `[T, C]`.
    pub ln_f: Array2<f32>,
    /// `[T, vocab]`.
    pub logits: Array2<f32>,
}

impl ModelSteps {
    /// The input of block `i`: the embedding for block 0, else block `i - 1`'s output.
    pub fn block_input(&self, i: usize) -> ArrayView2<'_, f32> {
        if i == 0 {
            self.embed.view()
        } else {
            self.h[i - 1].out.view()
        }
    }

    /// The residual stream leaving the last block (the input of `ln_f`): `[T, C]`.
    pub fn last_block_output(&self) -> ArrayView2<'_, f32> {
        self.block_input(self.h.len())
    }
}

/// GPT-2's forward pass, every step kept: `ids [T]` → logits `[T, vocab]`.
///
/// ```text
/// x = wte[ids] + wpe[0..T]
/// for each block h[i]:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
/// logits = ln_f(x) · wteᵀ
/// ```
///
/// A model whose weights are stored in half precision is first upcast to
/// `f32` ([`Gpt2::upcast`]; exact): the reference computes with `f32` values.
///
/// Panics if `ids` is empty, longer than `n_positions`, or holds an id
/// `≥ vocab_size` (this is the tier for reading; [`Gpt2::forward`] checks and
/// returns errors).
pub fn forward_steps(model: &Gpt2, ids: &[u32]) -> ModelSteps {
    // Half-precision weights are upcast once, here: below, every weight is a
    // plain f32 view.
    let model = &*model.upcast();
    let config = &model.config;
    assert!(
        !ids.is_empty() && ids.len() <= config.n_positions,
        "need 1..=n_positions ids"
    );
    let embed = embedding(model.wte.view(), model.wpe.view(), ids); // [T, C]
    let mut h: Vec<BlockSteps> = Vec::with_capacity(model.h.len());
    for (i, block_weights) in model.h.iter().enumerate() {
        let x = h.last().map_or(embed.view(), |b| b.out.view()); // [T, C]
        h.push(block(config, i, block_weights, x));
    }
    let x = h.last().map_or(embed.view(), |b| b.out.view());
    let ln_f = layer_norm(x, &model.ln_f); // [T, C]
    let logits = head(
        ln_f.view(),
        model.wte.view(),
        model.lm_head.as_ref().map(|w| w.view()),
    ); // [T, vocab]
    ModelSteps {
        ids: ids.to_vec(),
        embed,
        h,
        ln_f,
        logits,
    }
}

/// GPT-2's forward pass ([`forward_steps`]), every step recorded by name:
/// `ids [T]` → [`Activations`], logits `[T, vocab]` last. Panics as
/// [`forward_steps`] does.
pub fn forward(model: &Gpt2, ids: &[u32]) -> Activations {
    let steps = forward_steps(model, ids);
    let mut acts = Activations::default();
    acts.put("embed", &steps.embed);
    for (i, b) in steps.h.iter().enumerate() {
        acts.put_block(i, b);
    }
    acts.put("ln_f", &steps.ln_f);
    acts.put("logits", &steps.logits);
    acts
}

/// Every activation of a [`forward`] pass, in the order computed, by the
/// names of the trace table ([`crate::trace`]): `embed`, `h.{i}.ln_1`,
/// `h.{i}.attn.c_attn`, `h.{i}.attn.q`/`.k`/`.v`, `h.{i}.attn.scores`,
/// `h.{i}.attn.probs`, `h.{i}.attn.merged`, `h.{i}.attn.c_proj`,
/// `h.{i}.resid_1`, `h.{i}.ln_2`, `h.{i}.mlp.c_fc`, `h.{i}.mlp.act`,
/// `h.{i}.mlp.c_proj`, `h.{i}`, `ln_f`, `logits`.
///
/// All of them are kept, so memory grows with `n_layer · n_head · T²`
/// (the attention maps): fine for the small models and prompts a reader
/// studies, not for GPT-2 XL at 1024 tokens.
#[derive(Clone, Debug, Default)]
pub struct Activations {
    steps: Vec<(String, ArrayD<f32>)>,
}

impl Activations {
    /// The activation called `name` (`"h.3.attn.probs"`).
    pub fn get(&self, name: &str) -> Option<&ArrayD<f32>> {
        self.steps.iter().find(|(n, _)| n == name).map(|(_, x)| x)
    }

    /// Every activation, `(name, tensor)`, in the order the forward pass computed them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ArrayD<f32>)> {
        self.steps.iter().map(|(n, x)| (n.as_str(), x))
    }

    /// The logits `[T, vocab]`.
    pub fn logits(&self) -> ArrayView2<'_, f32> {
        let logits = self.get("logits").expect("forward records the logits");
        logits
            .view()
            .into_dimensionality()
            .expect("logits are [T, vocab]")
    }

    fn put<D: Dimension>(&mut self, name: impl Into<String>, x: &ndarray::Array<f32, D>) {
        self.steps.push((name.into(), x.clone().into_dyn()));
    }

    /// Record the steps of block `i` as `h.{i}.*`.
    fn put_block(&mut self, i: usize, b: &BlockSteps) {
        let heads = &b.attn.heads;
        let name = |step: &str| format!("h.{i}.{step}");
        self.put(name("ln_1"), &b.ln_1);
        self.put(name("attn.c_attn"), &b.attn.c_attn);
        for (step, x) in [
            ("attn.q", &b.attn.q),
            ("attn.k", &b.attn.k),
            ("attn.v", &b.attn.v),
        ] {
            self.put(name(step), x);
        }
        self.put(name("attn.scores"), &heads.scores);
        self.put(name("attn.probs"), &heads.probs);
        self.put(name("attn.merged"), &b.attn.merged);
        self.put(name("attn.c_proj"), &b.attn.c_proj);
        self.put(name("resid_1"), &b.resid_1);
        self.put(name("ln_2"), &b.ln_2);
        for (step, x) in [
            ("mlp.c_fc", &b.mlp.c_fc),
            ("mlp.act", &b.mlp.act),
            ("mlp.c_proj", &b.mlp.c_proj),
        ] {
            self.put(name(step), x);
        }
        self.put(format!("h.{i}"), &b.out);
    }
}

// ------------------------------------------------------------------------------------------
// The backward pass: the same boxes, last to first.

/// The backward of [`embedding`]: row `t` of `dx = ∂loss/∂x` is added to row
/// `ids[t]` of `∂wte` and to row `t` of `∂wpe` (a scatter-add: a token that
/// occurs twice collects both rows; tokens that do not occur get nothing).
/// Adds into `d_wte` and `d_wpe`, which also collect other contributions (the
/// tied head's, the other sequences of a batch).
///
/// Shapes: `ids: [T]`, `dx: [T, C]`, `d_wte: [vocab, C]`, `d_wpe: [n_positions, C]`.
pub fn embedding_backward(
    ids: &[u32],
    dx: ArrayView2<f32>,
    mut d_wte: ArrayViewMut2<f32>,
    mut d_wpe: ArrayViewMut2<f32>,
) {
    for (t, (row, &id)) in dx.rows().into_iter().zip(ids).enumerate() {
        let mut token_row = d_wte.row_mut(id as usize);
        token_row += &row;
        let mut position_row = d_wpe.row_mut(t);
        position_row += &row;
    }
}

/// The backward of [`mlp`], its three steps undone in reverse:
/// `c_proj` ([`conv1d_backward`]), the activation ([`activation_backward`], at
/// the `c_fc` output), `c_fc` ([`conv1d_backward`]). Returns
/// `(∂x, ∂c_fc, ∂c_proj)`.
///
/// Shapes: `x, dy: [T, C]` (`x` the `ln_2` output), the steps' `[T, n_inner]`
/// → `∂x: [T, C]`.
pub fn mlp_backward(
    act: Activation,
    mlp: &Mlp,
    x: ArrayView2<f32>,
    steps: &MlpSteps,
    dy: ArrayView2<f32>,
) -> (Array2<f32>, Conv1DGradients, Conv1DGradients) {
    let (d_act, d_c_proj) = conv1d_backward(steps.act.view(), &mlp.c_proj, dy); // [T, n_inner]
    let d_c_fc_out = activation_backward(act, steps.c_fc.view(), d_act.view()); // [T, n_inner]
    let (dx, d_c_fc) = conv1d_backward(x, &mlp.c_fc, d_c_fc_out.view()); // [T, C]
    (dx, d_c_fc, d_c_proj)
}

/// The backward of [`block`] in position `layer`: from `dout = ∂loss/∂out`,
/// the gradient of its input `x` and of all its weights.
///
/// A residual add `y = x + f(x)` passes its gradient to `x` twice: straight
/// through, and through the branch `f`. So, the MLP half then the attention half:
///
/// ```text
/// out = resid_1 + mlp(ln_2(resid_1))   ∂resid_1 = dout + ln_2ᵀ(mlpᵀ(dout))
/// resid_1 = x + attn(ln_1(x))          ∂x = ∂resid_1 + ln_1ᵀ(attnᵀ(∂resid_1))
/// ```
///
/// (`fᵀ` for "the backward of `f`"). Shapes: `x, dout: [T, C]` → `∂x: [T, C]`.
pub fn block_backward(
    config: &Config,
    layer: usize,
    h: &Block,
    x: ArrayView2<f32>,
    steps: &BlockSteps,
    dout: ArrayView2<f32>,
) -> (Array2<f32>, BlockGradients) {
    let (d_ln_2, c_fc, mlp_c_proj) = mlp_backward(
        config.activation,
        &h.mlp,
        steps.ln_2.view(),
        &steps.mlp,
        dout,
    );
    let (d_resid_1_branch, ln_2) =
        layer_norm_backward(steps.resid_1.view(), &h.ln_2, d_ln_2.view());
    let d_resid_1 = &dout + &d_resid_1_branch; // [T, C]
    let (d_ln_1, c_attn, attn_c_proj) = causal_self_attention_backward(
        config,
        layer,
        &h.attn,
        steps.ln_1.view(),
        &steps.attn,
        d_resid_1.view(),
    );
    let (dx_branch, ln_1) = layer_norm_backward(x, &h.ln_1, d_ln_1.view());
    let dx = d_resid_1 + dx_branch; // [T, C]
    let grads = BlockGradients {
        ln_1,
        c_attn,
        attn_c_proj,
        ln_2,
        c_fc,
        mlp_c_proj,
    };
    (dx, grads)
}

/// The backward of [`head`], `logits = x·Wᵀ`: `∂x = dlogits·W` and
/// `∂W = dlogitsᵀ·x` ([`matmul_backward`](super::matmul_backward) with `B = Wᵀ`). `W` is `lm_head`
/// if given, else `wte`; with a tied head the caller adds `∂W` into `wte`'s
/// gradient, beside the embedding's rows.
///
/// Shapes: `x: [T, C]`, `W: [vocab, C]`, `dlogits: [T, vocab]` →
/// `∂x: [T, C]`, `∂W: [vocab, C]`.
pub fn head_backward<'w>(
    x: ArrayView2<f32>,
    wte: ArrayView2<'w, f32>,
    lm_head: Option<ArrayView2<'w, f32>>,
    dlogits: ArrayView2<f32>,
) -> (Array2<f32>, Array2<f32>) {
    let w = lm_head.unwrap_or(wte);
    let dx = matmul(dlogits, w); // [T, vocab]·[vocab, C]
    let dw = matmul(dlogits.t(), x); // [vocab, T]·[T, C]
    (dx, dw)
}

/// The backward pass of one sequence: from `dlogits = ∂loss/∂logits`
/// (`[T, vocab]`) and its forward's `steps`, adds `∂loss/∂θ` of every
/// parameter into `grads`, each box of [`forward_steps`] undone last to first:
///
/// ```text
/// head:    ∂ln_f, ∂W          W = lm_head, or wte (tied: added to wte's gradient)
/// ln_f:    ∂x, ∂ln_f weights
/// blocks:  for i = n_layer-1 … 0: ∂x, ∂h[i] = block_backward(…, ∂x)
/// embed:   scatter-add ∂x into wte's rows ids[t] and wpe's rows t
/// ```
///
/// Half-precision weights are upcast as in [`forward_steps`].
pub fn backward(model: &Gpt2, steps: &ModelSteps, dlogits: ArrayView2<f32>, grads: &mut Gradients) {
    let model = &*model.upcast();
    let lm_head = model.lm_head.as_ref().map(|w| w.view());
    let (d_ln_f, d_head) = head_backward(steps.ln_f.view(), model.wte.view(), lm_head, dlogits);
    match &mut grads.lm_head {
        Some(d_lm_head) => *d_lm_head += &d_head,
        None => grads.wte += &d_head, // tied: the head is wte too
    }
    let (mut dx, d_ln) = layer_norm_backward(steps.last_block_output(), &model.ln_f, d_ln_f.view());
    grads.ln_f += &d_ln;
    for (i, h) in model.h.iter().enumerate().rev() {
        let (d_input, d_block) = block_backward(
            &model.config,
            i,
            h,
            steps.block_input(i),
            &steps.h[i],
            dx.view(),
        );
        grads.h[i] += &d_block;
        dx = d_input; // [T, C]
    }
    embedding_backward(
        &steps.ids,
        dx.view(),
        grads.wte.view_mut(),
        grads.wpe.view_mut(),
    );
}

/// The loss of a batch and the gradient of every parameter: what one training
/// step needs. `inputs` and `targets` are `[B, T]` (the targets are the inputs
/// shifted by one, in training: row `b` predicts `targets[b, t]` from
/// `inputs[b, ..=t]`).
///
/// ```text
/// logits_b = forward_steps(inputs[b])              for each of the B rows   [T, vocab]
/// loss     = cross_entropy(logits, targets)        mean over the B·T rows
/// dlogits  = cross_entropy_backward(…)             [B·T, vocab]
/// grads    = Σ_b backward(steps_b, dlogits_b)      each row's part, added
/// ```
///
/// The same as PyTorch's `F.cross_entropy(logits.view(-1, V), targets.view(-1))`
/// then `loss.backward()`: `tests/backward.rs` checks it on the golden models.
/// Keeps every step of the `B` forward passes and `B·T·vocab` logits twice:
/// this is the tier for reading, not for big batches. Panics if the shapes
/// differ, the batch is empty, a target is `≥ vocab_size`, or as
/// [`forward_steps`] does.
///
/// ```no_run
/// use gpt2_ndarray::{reference, Gpt2};
/// use ndarray::array;
/// # fn main() -> anyhow::Result<()> {
/// let model = Gpt2::from_dir("models/kjv-gpt2")?;
/// let inputs = array![[818u32, 262]]; // "In the": predict " the", then " beginning"
/// let targets = array![[262u32, 3726]];
/// let (loss, grads) = reference::loss_and_gradients(&model, inputs.view(), targets.view());
/// for (name, g) in grads.named() {
///     println!("{name} {:?}", g.shape()); // wte.weight [50257, C], ..., ln_f.bias [C]
/// }
/// # Ok(()) }
/// ```
pub fn loss_and_gradients(
    model: &Gpt2,
    inputs: ArrayView2<u32>,
    targets: ArrayView2<u32>,
) -> (f32, Gradients) {
    assert_eq!(
        inputs.dim(),
        targets.dim(),
        "inputs and targets are both [B, T]"
    );
    assert!(inputs.nrows() > 0, "need at least one row");
    let model = &*model.upcast(); // once for every row, not once per row
    let t = inputs.ncols();
    let runs: Vec<ModelSteps> = inputs
        .rows()
        .into_iter()
        .map(|ids| forward_steps(model, &ids.to_vec()))
        .collect();
    let logits: Vec<ArrayView2<f32>> = runs.iter().map(|r| r.logits.view()).collect();
    let logits = concatenate(Axis(0), &logits).expect("every row has T × vocab logits"); // [B·T, vocab]
    let targets: Vec<u32> = targets.iter().copied().collect(); // [B·T], row by row
    let loss = cross_entropy(logits.view(), &targets);
    let dlogits = cross_entropy_backward(logits.view(), &targets); // [B·T, vocab]
    let mut grads = Gradients::zeros_like(model);
    for (b, run) in runs.iter().enumerate() {
        backward(
            model,
            run,
            dlogits.slice(s![b * t..(b + 1) * t, ..]),
            &mut grads,
        );
    }
    (loss, grads)
}
