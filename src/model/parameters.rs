//! Every parameter of a [`Gpt2`] by its state-dict name: the one listing the
//! optimiser ([`crate::train::parameters`]), the gradients
//! ([`crate::reference::Gradients::named`], the same names in the same order)
//! and the safetensors writer ([`Gpt2::save_safetensors`]) follow.

use ndarray::Array1;

use super::Gpt2;
use crate::weights::Matrix;

/// A block's parameters by state-dict name (without the `h.{i}.` prefix), in
/// checkpoint order.
pub const BLOCK_PARAMETERS: [&str; 12] = [
    "ln_1.weight",
    "ln_1.bias",
    "attn.c_attn.weight",
    "attn.c_attn.bias",
    "attn.c_proj.weight",
    "attn.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
];

/// One parameter: a weight matrix (kept in its stored dtype) or a vector
/// (biases and LayerNorm gains, always `f32`).
#[derive(Clone, Copy, Debug)]
pub enum Parameter<'a> {
    Matrix(&'a Matrix),
    Vector(&'a Array1<f32>),
}

/// [`Parameter`], mutable.
#[derive(Debug)]
pub enum ParameterMut<'a> {
    Matrix(&'a mut Matrix),
    Vector(&'a mut Array1<f32>),
}

/// The listing behind [`Gpt2::parameters`] and [`Gpt2::parameters_mut`],
/// written once for both: `$iter` is `iter` or `iter_mut`, `$p` the enum,
/// `$($mut)?` the borrow.
macro_rules! parameter_list {
    ($model:ident, $iter:ident, $p:ident $(, $mut:tt)?) => {{
        let mut out = vec![
            ("wte.weight".to_string(), $p::Matrix(&$($mut)? $model.wte)),
            ("wpe.weight".to_string(), $p::Matrix(&$($mut)? $model.wpe)),
        ];
        for (i, b) in $model.h.$iter().enumerate() {
            let tensors = [
                $p::Vector(&$($mut)? b.ln_1.weight),
                $p::Vector(&$($mut)? b.ln_1.bias),
                $p::Matrix(&$($mut)? b.attn.c_attn.weight),
                $p::Vector(&$($mut)? b.attn.c_attn.bias),
                $p::Matrix(&$($mut)? b.attn.c_proj.weight),
                $p::Vector(&$($mut)? b.attn.c_proj.bias),
                $p::Vector(&$($mut)? b.ln_2.weight),
                $p::Vector(&$($mut)? b.ln_2.bias),
                $p::Matrix(&$($mut)? b.mlp.c_fc.weight),
                $p::Vector(&$($mut)? b.mlp.c_fc.bias),
                $p::Matrix(&$($mut)? b.mlp.c_proj.weight),
                $p::Vector(&$($mut)? b.mlp.c_proj.bias),
            ];
            out.extend(
                BLOCK_PARAMETERS
                    .iter()
                    .zip(tensors)
                    .map(|(n, x)| (format!("h.{i}.{n}"), x)),
            );
        }
        out.push(("ln_f.weight".to_string(), $p::Vector(&$($mut)? $model.ln_f.weight)));
        out.push(("ln_f.bias".to_string(), $p::Vector(&$($mut)? $model.ln_f.bias)));
        if let Some(w) = &$($mut)? $model.lm_head {
            out.push(("lm_head.weight".to_string(), $p::Matrix(w)));
        }
        out
    }};
}

impl Gpt2 {
    /// Every parameter by its state-dict name without the `transformer.`
    /// prefix, in checkpoint order: `wte.weight`, `wpe.weight`, each block's
    /// [`BLOCK_PARAMETERS`] as `h.{i}.ln_1.weight` …, `ln_f.weight`,
    /// `ln_f.bias`, and `lm_head.weight` for an untied head (a tied head is
    /// `wte`, listed once).
    pub fn parameters(&self) -> Vec<(String, Parameter<'_>)> {
        parameter_list!(self, iter, Parameter)
    }

    /// [`Gpt2::parameters`], mutable: the same names in the same order.
    pub fn parameters_mut(&mut self) -> Vec<(String, ParameterMut<'_>)> {
        parameter_list!(self, iter_mut, ParameterMut, mut)
    }
}
