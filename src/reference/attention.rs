//! Causal self-attention: one head, many heads, and GPT-2's attention layer;
//! then the backward of each.

use ndarray::{concatenate, s, stack, Array2, Array3, ArrayView2, ArrayView3, Axis};

use super::{
    conv1d, conv1d_backward, matmul, matmul_backward, softmax_rows, softmax_rows_backward,
    Attention, Config, Conv1DGradients,
};

/// The factor GPT-2 multiplies attention scores by in block `layer` (0-based):
/// `1/√d` (`d = n_embd / n_head`) if `scale_attn_weights` (GPT-2: true), times
/// `1/(layer + 1)` if `scale_attn_by_inverse_layer_idx` (GPT-2: false).
///
/// Dividing by `√d` keeps the scores' spread independent of the head width:
/// `q·k` sums `d` products. `reorder_and_upcast_attn` changes where
/// transformers applies the factor (inside the `q·kᵀ` product, in float32
/// under fp16 autocast), not its value: in float32 it is the same maths.
pub fn attention_scale(config: &Config, layer: usize) -> f32 {
    let mut scale = 1.0;
    if config.scale_attn_weights {
        scale /= (config.head_dim() as f32).sqrt();
    }
    if config.scale_attn_by_inverse_layer_idx {
        scale /= (layer + 1) as f32;
    }
    scale
}

/// One head's attention: its scores, probabilities and output.
#[derive(Clone, Debug)]
pub struct Head {
    /// `q·kᵀ·scale`, `-∞` where masked: `[Tq, Tk]`.
    pub scores: Array2<f32>,
    /// [`softmax_rows`] of the scores: `[Tq, Tk]`, each row sums to 1.
    pub probs: Array2<f32>,
    /// `probs · v`: `[Tq, d]`.
    pub out: Array2<f32>,
}

/// One head of causal attention: `softmax(q·kᵀ·scale + mask) · v`.
///
/// Shapes: `q: [Tq, d]`, `k, v: [Tk, d]` → scores and probabilities
/// `[Tq, Tk]`, output `[Tq, d]`. The queries are the last `Tq` of the `Tk`
/// positions (`Tq = Tk` for a whole prompt; fewer when earlier keys are
/// cached), and query `i` may look at key `j` only if `j ≤ i + (Tk - Tq)`:
/// a token never sees the future. A masked score is `-∞`, so its probability
/// is exactly 0 (transformers writes the most negative float instead: the
/// same probabilities).
pub fn attention_head(
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    scale: f32,
) -> Head {
    let (tq, tk) = (q.nrows(), k.nrows());
    assert!(
        tq <= tk,
        "attention_head: more queries ({tq}) than keys ({tk})"
    );
    let mut scores = matmul(q, k.t()) * scale; // [Tq, d] · [d, Tk] -> [Tq, Tk]
    for ((i, j), s) in scores.indexed_iter_mut() {
        if j > i + (tk - tq) {
            *s = f32::NEG_INFINITY; // the future
        }
    }
    let probs = softmax_rows(scores.view());
    let out = matmul(probs.view(), v); // [Tq, Tk] · [Tk, d] -> [Tq, d]
    Head { scores, probs, out }
}

/// `[T, C]` → `[n_head, T, d]`: head `h` is columns `h·d .. (h+1)·d`.
pub fn split_heads(x: ArrayView2<f32>, n_head: usize) -> Array3<f32> {
    let (t, c) = x.dim();
    assert_eq!(
        c % n_head,
        0,
        "split_heads: {c} columns do not split into {n_head} heads"
    );
    let d = c / n_head;
    Array3::from_shape_fn((n_head, t, d), |(h, i, j)| x[[i, h * d + j]])
}

/// `[n_head, T, d]` → `[T, C]`, the inverse of [`split_heads`]: the heads side by side.
pub fn merge_heads(x: ArrayView3<f32>) -> Array2<f32> {
    let (n_head, t, d) = x.dim();
    Array2::from_shape_fn((t, n_head * d), |(i, c)| x[[c / d, i, c % d]])
}

/// Every head's attention, stacked on the first axis.
#[derive(Clone, Debug)]
pub struct Heads {
    /// `[n_head, Tq, Tk]`.
    pub scores: Array3<f32>,
    /// `[n_head, Tq, Tk]`.
    pub probs: Array3<f32>,
    /// `[n_head, Tq, d]`.
    pub out: Array3<f32>,
}

/// Multi-head attention: [`attention_head`] for each head on its own slice of
/// `q`, `k`, `v`. Shapes: `q: [n_head, Tq, d]`, `k, v: [n_head, Tk, d]`.
///
/// Each head looks at the sequence through its own `d`-wide projections, so
/// different heads can attend to different positions.
pub fn multi_head_attention(
    q: ArrayView3<f32>,
    k: ArrayView3<f32>,
    v: ArrayView3<f32>,
    scale: f32,
) -> Heads {
    let heads: Vec<Head> = (0..q.len_of(Axis(0)))
        .map(|h| {
            attention_head(
                q.index_axis(Axis(0), h),
                k.index_axis(Axis(0), h),
                v.index_axis(Axis(0), h),
                scale,
            )
        })
        .collect();
    let stacked = |part: fn(&Head) -> ArrayView2<f32>| {
        let views: Vec<ArrayView2<f32>> = heads.iter().map(part).collect();
        stack(Axis(0), &views).expect("every head has the same shape")
    };
    Heads {
        scores: stacked(|h| h.scores.view()),
        probs: stacked(|h| h.probs.view()),
        out: stacked(|h| h.out.view()),
    }
}

/// The queries, keys and values of every head, and their attention: what
/// [`causal_self_attention`] computes on the way.
#[derive(Clone, Debug)]
pub struct AttentionSteps {
    /// `c_attn(x)`, `q | k | v` side by side: `[T, 3C]`.
    pub c_attn: Array2<f32>,
    /// `[n_head, T, d]` each.
    pub q: Array3<f32>,
    pub k: Array3<f32>,
    pub v: Array3<f32>,
    /// Scores, probabilities and outputs of each head.
    pub heads: Heads,
    /// [`merge_heads`] of the heads' outputs: `[T, C]`.
    pub merged: Array2<f32>,
    /// `c_proj(merged)`, the layer's output: `[T, C]`.
    pub c_proj: Array2<f32>,
}

/// GPT-2's attention layer (`GPT2Attention`) in block `layer`: project `x` to
/// queries, keys and values with `c_attn`, split them into heads, attend
/// causally, merge the heads, project back with `c_proj`.
/// Shapes: `[T, C]` → `[T, 3C]` → 3 × `[n_head, T, d]` → `[T, C]`.
pub fn causal_self_attention(
    config: &Config,
    layer: usize,
    attn: &Attention,
    x: ArrayView2<f32>,
) -> AttentionSteps {
    let c = config.n_embd;
    let c_attn = conv1d(x, &attn.c_attn); // [T, 3C]
    let [q, k, v] =
        [0, 1, 2].map(|j| split_heads(c_attn.slice(s![.., j * c..(j + 1) * c]), config.n_head));
    let heads = multi_head_attention(q.view(), k.view(), v.view(), attention_scale(config, layer));
    let merged = merge_heads(heads.out.view()); // [n_head, T, d] -> [T, C]
    let c_proj = conv1d(merged.view(), &attn.c_proj); // [T, C]
    AttentionSteps {
        c_attn,
        q,
        k,
        v,
        heads,
        merged,
        c_proj,
    }
}

/// The backward of [`attention_head`]: from `dout = ∂loss/∂out`, the
/// gradients `(∂q, ∂k, ∂v)`. Walking the forward back, with `P` = `probs`:
///
/// ```text
/// out = P·v                 ∂P = dout·vᵀ,  ∂v = Pᵀ·dout      (matmul_backward)
/// P = softmax_rows(S)       ∂S = softmax_rows_backward(P, ∂P)  (0 where masked: P = 0 there)
/// S = q·kᵀ·scale            ∂q = ∂S·k·scale,  ∂k = ∂Sᵀ·q·scale
/// ```
///
/// The mask needs no step of its own: a masked score is a constant `-∞`, and
/// its probability, 0, stops the gradient in `softmax_rows_backward`.
///
/// Shapes: `q: [Tq, d]`, `k, v: [Tk, d]`, `probs: [Tq, Tk]` (from the forward),
/// `dout: [Tq, d]` → `∂q: [Tq, d]`, `∂k, ∂v: [Tk, d]`.
pub fn attention_head_backward(
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    probs: ArrayView2<f32>,
    scale: f32,
    dout: ArrayView2<f32>,
) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
    let (d_probs, dv) = matmul_backward(probs, v, dout); // [Tq, Tk], [Tk, d]
    let d_qk = softmax_rows_backward(probs, d_probs.view()) * scale; // ∂(q·kᵀ): [Tq, Tk]
    let dq = matmul(d_qk.view(), k); // [Tq, Tk]·[Tk, d]
    let dk = matmul(d_qk.t(), q); // [Tk, Tq]·[Tq, d]
    (dq, dk, dv)
}

/// The backward of [`split_heads`]: a split only moves entries, so its
/// gradient moves them back, [`merge_heads`]. `[n_head, T, d]` → `[T, C]`.
pub fn split_heads_backward(dy: ArrayView3<f32>) -> Array2<f32> {
    merge_heads(dy)
}

/// The backward of [`merge_heads`]: [`split_heads`]. `[T, C]` → `[n_head, T, d]`.
pub fn merge_heads_backward(dy: ArrayView2<f32>, n_head: usize) -> Array3<f32> {
    split_heads(dy, n_head)
}

/// The backward of [`multi_head_attention`]: [`attention_head_backward`] for
/// each head on its own slice (the heads share nothing).
///
/// Shapes: `q: [n_head, Tq, d]`, `k, v: [n_head, Tk, d]`, `probs: [n_head, Tq, Tk]`,
/// `dout: [n_head, Tq, d]` → `(∂q, ∂k, ∂v)`, shaped as `q`, `k`, `v`.
pub fn multi_head_attention_backward(
    q: ArrayView3<f32>,
    k: ArrayView3<f32>,
    v: ArrayView3<f32>,
    probs: ArrayView3<f32>,
    scale: f32,
    dout: ArrayView3<f32>,
) -> (Array3<f32>, Array3<f32>, Array3<f32>) {
    let (mut dq, mut dk, mut dv) = (
        Array3::zeros(q.raw_dim()),
        Array3::zeros(k.raw_dim()),
        Array3::zeros(v.raw_dim()),
    );
    for h in 0..q.len_of(Axis(0)) {
        let (dq_h, dk_h, dv_h) = attention_head_backward(
            q.index_axis(Axis(0), h),
            k.index_axis(Axis(0), h),
            v.index_axis(Axis(0), h),
            probs.index_axis(Axis(0), h),
            scale,
            dout.index_axis(Axis(0), h),
        );
        dq.index_axis_mut(Axis(0), h).assign(&dq_h);
        dk.index_axis_mut(Axis(0), h).assign(&dk_h);
        dv.index_axis_mut(Axis(0), h).assign(&dv_h);
    }
    (dq, dk, dv)
}

/// The backward of [`causal_self_attention`] in block `layer`: from
/// `dy = ∂loss/∂c_proj` (the layer's output), the gradient of its input `x`
/// and of the weights of `c_attn` and `c_proj`, returned in that order. Each
/// forward step is undone in reverse order:
///
/// ```text
/// forward step                backward                                   gives
/// c_proj = conv1d(merged)     conv1d_backward                            ∂merged [T, C], c_proj's weights'
/// merged = merge_heads(out)   merge_heads_backward                       ∂out [n_head, T, d]
/// out = attention(q, k, v)    multi_head_attention_backward (same scale) ∂q, ∂k, ∂v [n_head, T, d]
/// q | k | v = split(c_attn)   split_heads_backward, side by side         ∂c_attn = ∂q | ∂k | ∂v [T, 3C]
/// c_attn = conv1d(x)          conv1d_backward                            ∂x [T, C], c_attn's weights'
/// ```
///
/// `steps` are the forward's, `x` its input (the `ln_1` output).
pub fn causal_self_attention_backward(
    config: &Config,
    layer: usize,
    attn: &Attention,
    x: ArrayView2<f32>,
    steps: &AttentionSteps,
    dy: ArrayView2<f32>,
) -> (Array2<f32>, Conv1DGradients, Conv1DGradients) {
    let (d_merged, d_c_proj) = conv1d_backward(steps.merged.view(), &attn.c_proj, dy); // [T, C]
    let d_out = merge_heads_backward(d_merged.view(), config.n_head); // [n_head, T, d]
    let (dq, dk, dv) = multi_head_attention_backward(
        steps.q.view(),
        steps.k.view(),
        steps.v.view(),
        steps.heads.probs.view(),
        attention_scale(config, layer),
        d_out.view(),
    );
    let [dq, dk, dv] = [dq, dk, dv].map(|d| split_heads_backward(d.view())); // [T, C] each
    let dc_attn = concatenate![Axis(1), dq, dk, dv]; // [T, 3C]
    let (dx, d_c_attn) = conv1d_backward(x, &attn.c_attn, dc_attn.view());
    (dx, d_c_attn, d_c_proj)
}
