//! Gradients: `∂loss/∂θ` for every parameter `θ`, shaped and named like the model.

use std::ops::AddAssign;

use ndarray::{Array1, Array2, ArrayViewD, ArrayViewMutD};

use super::{Gpt2, LayerNorm, BLOCK_PARAMETERS};

/// The gradient of a [`LayerNorm`]'s gain and bias, `[n]` each.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNormGradients {
    pub weight: Array1<f32>,
    pub bias: Array1<f32>,
}

/// The gradient of a `Conv1D`'s weight `[in, out]` and bias `[out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv1DGradients {
    pub weight: Array2<f32>,
    pub bias: Array1<f32>,
}

/// The gradients of one transformer block, field by field as [`crate::model::Block`].
#[derive(Clone, Debug, PartialEq)]
pub struct BlockGradients {
    pub ln_1: LayerNormGradients,
    /// `attn.c_attn`.
    pub c_attn: Conv1DGradients,
    /// `attn.c_proj`.
    pub attn_c_proj: Conv1DGradients,
    pub ln_2: LayerNormGradients,
    /// `mlp.c_fc`.
    pub c_fc: Conv1DGradients,
    /// `mlp.c_proj`.
    pub mlp_c_proj: Conv1DGradients,
}

/// `∂loss/∂θ` for every parameter of a [`Gpt2`], each the shape of its
/// parameter. With a tied head, `wte` holds the sum of both of its uses (the
/// embedding's rows and the head's); `lm_head` is `Some` only when the model
/// has its own head.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    /// `[vocab, C]`.
    pub wte: Array2<f32>,
    /// `[n_positions, C]`.
    pub wpe: Array2<f32>,
    pub h: Vec<BlockGradients>,
    pub ln_f: LayerNormGradients,
    /// `[vocab, C]`, for an untied head.
    pub lm_head: Option<Array2<f32>>,
}

/// The listing behind [`Gradients::named`] and [`Gradients::named_mut`],
/// written once for both (`$iter`, `$view`, `$as` are `iter`, `view`,
/// `as_ref` or their `_mut` twins).
macro_rules! named_gradients {
    ($g:ident, $iter:ident, $view:ident, $as:ident) => {{
        let mut out = vec![
            ("wte.weight".to_string(), $g.wte.$view().into_dyn()),
            ("wpe.weight".to_string(), $g.wpe.$view().into_dyn()),
        ];
        for (i, b) in $g.h.$iter().enumerate() {
            let tensors = [
                b.ln_1.weight.$view().into_dyn(),
                b.ln_1.bias.$view().into_dyn(),
                b.c_attn.weight.$view().into_dyn(),
                b.c_attn.bias.$view().into_dyn(),
                b.attn_c_proj.weight.$view().into_dyn(),
                b.attn_c_proj.bias.$view().into_dyn(),
                b.ln_2.weight.$view().into_dyn(),
                b.ln_2.bias.$view().into_dyn(),
                b.c_fc.weight.$view().into_dyn(),
                b.c_fc.bias.$view().into_dyn(),
                b.mlp_c_proj.weight.$view().into_dyn(),
                b.mlp_c_proj.bias.$view().into_dyn(),
            ];
            out.extend(
                BLOCK_PARAMETERS
                    .iter()
                    .zip(tensors)
                    .map(|(n, x)| (format!("h.{i}.{n}"), x)),
            );
        }
        out.push(("ln_f.weight".to_string(), $g.ln_f.weight.$view().into_dyn()));
        out.push(("ln_f.bias".to_string(), $g.ln_f.bias.$view().into_dyn()));
        if let Some(w) = $g.lm_head.$as() {
            out.push(("lm_head.weight".to_string(), w.$view().into_dyn()));
        }
        out
    }};
}

impl LayerNormGradients {
    fn zeros(n: usize) -> Self {
        LayerNormGradients {
            weight: Array1::zeros(n),
            bias: Array1::zeros(n),
        }
    }
}

impl Conv1DGradients {
    fn zeros(n_in: usize, n_out: usize) -> Self {
        Conv1DGradients {
            weight: Array2::zeros((n_in, n_out)),
            bias: Array1::zeros(n_out),
        }
    }
}

impl Gradients {
    /// All-zero gradients of `model`'s shapes, to accumulate into.
    pub fn zeros_like(model: &Gpt2) -> Self {
        let ln = |w: &LayerNorm| LayerNormGradients::zeros(w.weight.len());
        Gradients {
            wte: Array2::zeros(model.wte.dim()),
            wpe: Array2::zeros(model.wpe.dim()),
            h: model
                .h
                .iter()
                .map(|b| BlockGradients {
                    ln_1: ln(&b.ln_1),
                    c_attn: Conv1DGradients::zeros(b.attn.c_attn.n_in(), b.attn.c_attn.n_out()),
                    attn_c_proj: Conv1DGradients::zeros(
                        b.attn.c_proj.n_in(),
                        b.attn.c_proj.n_out(),
                    ),
                    ln_2: ln(&b.ln_2),
                    c_fc: Conv1DGradients::zeros(b.mlp.c_fc.n_in(), b.mlp.c_fc.n_out()),
                    mlp_c_proj: Conv1DGradients::zeros(b.mlp.c_proj.n_in(), b.mlp.c_proj.n_out()),
                })
                .collect(),
            ln_f: ln(&model.ln_f),
            lm_head: model.lm_head.as_ref().map(|w| Array2::zeros(w.dim())),
        }
    }

    /// Every gradient by its parameter's state-dict name, in checkpoint
    /// order: the names and order of [`Gpt2::parameters`] (`wte.weight`,
    /// `wpe.weight`, each block's [`BLOCK_PARAMETERS`] as `h.{i}.ln_1.weight`
    /// …, `ln_f.weight`, `ln_f.bias`, and `lm_head.weight` for an untied
    /// head; a tied head is `wte`, listed once).
    pub fn named(&self) -> Vec<(String, ArrayViewD<'_, f32>)> {
        named_gradients!(self, iter, view, as_ref)
    }

    /// [`Gradients::named`], mutable: the same names in the same order.
    pub fn named_mut(&mut self) -> Vec<(String, ArrayViewMutD<'_, f32>)> {
        named_gradients!(self, iter_mut, view_mut, as_mut)
    }
}

/// `a += &b`: gradients of the same parameters add (two sequences of a
/// batch, two uses of one weight).
impl AddAssign<&LayerNormGradients> for LayerNormGradients {
    fn add_assign(&mut self, other: &LayerNormGradients) {
        self.weight += &other.weight;
        self.bias += &other.bias;
    }
}

impl AddAssign<&Conv1DGradients> for Conv1DGradients {
    fn add_assign(&mut self, other: &Conv1DGradients) {
        self.weight += &other.weight;
        self.bias += &other.bias;
    }
}

impl AddAssign<&BlockGradients> for BlockGradients {
    fn add_assign(&mut self, other: &BlockGradients) {
        self.ln_1 += &other.ln_1;
        self.c_attn += &other.c_attn;
        self.attn_c_proj += &other.attn_c_proj;
        self.ln_2 += &other.ln_2;
        self.c_fc += &other.c_fc;
        self.mlp_c_proj += &other.mlp_c_proj;
    }
}
