//! The whole model: embedding, blocks, final layer norm, head — and every step on the way.

use ndarray::{Array2, ArrayD, ArrayView2, Dimension};

use super::{
    activation, causal_self_attention, conv1d, layer_norm, matmul, Activation, AttentionSteps,
    Block, Config, Gpt2, Mlp,
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

/// GPT-2's forward pass, every step recorded: `ids [T]` → logits `[T, vocab]`.
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
pub fn forward(model: &Gpt2, ids: &[u32]) -> Activations {
    // Half-precision weights are upcast once, here: below, every weight is a
    // plain f32 view.
    let model = &*model.upcast();
    let config = &model.config;
    assert!(
        !ids.is_empty() && ids.len() <= config.n_positions,
        "need 1..=n_positions ids"
    );
    let mut acts = Activations::default();
    let mut x = embedding(model.wte.view(), model.wpe.view(), ids); // [T, C]
    acts.put("embed", &x);
    for (i, h) in model.h.iter().enumerate() {
        x = acts.put_block(i, block(config, i, h, x.view())); // [T, C]
    }
    let x = layer_norm(x.view(), &model.ln_f); // [T, C]
    acts.put("ln_f", &x);
    let logits = head(
        x.view(),
        model.wte.view(),
        model.lm_head.as_ref().map(|w| w.view()),
    );
    acts.put("logits", &logits); // [T, vocab]
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

    /// Record the steps of block `i` as `h.{i}.*`, return its output.
    fn put_block(&mut self, i: usize, b: BlockSteps) -> Array2<f32> {
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
        b.out
    }
}
