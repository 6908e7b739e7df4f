//! A model's parameters by state-dict name, to read and to update.

use ndarray::{ArrayViewMutD, CowArray, IxDyn};

use crate::model::Gpt2;
use crate::reference::BLOCK_PARAMETERS;

/// Every parameter of `model` by its state-dict name, in the order of
/// [`Gradients::named`](crate::reference::Gradients::named): `wte.weight`,
/// `wpe.weight`, each block's [`BLOCK_PARAMETERS`], `ln_f.weight`,
/// `ln_f.bias`, and `lm_head.weight` for an untied head (a tied head is
/// `wte`, listed once). Weights stored in half precision are upcast copies;
/// the others are views.
pub fn parameters(model: &Gpt2) -> Vec<(String, CowArray<'_, f32, IxDyn>)> {
    let mut out = vec![
        ("wte.weight".to_string(), model.wte.to_f32().into_dyn()),
        ("wpe.weight".to_string(), model.wpe.to_f32().into_dyn()),
    ];
    for (i, b) in model.h.iter().enumerate() {
        let tensors = [
            CowArray::from(b.ln_1.weight.view().into_dyn()),
            CowArray::from(b.ln_1.bias.view().into_dyn()),
            b.attn.c_attn.weight.to_f32().into_dyn(),
            CowArray::from(b.attn.c_attn.bias.view().into_dyn()),
            b.attn.c_proj.weight.to_f32().into_dyn(),
            CowArray::from(b.attn.c_proj.bias.view().into_dyn()),
            CowArray::from(b.ln_2.weight.view().into_dyn()),
            CowArray::from(b.ln_2.bias.view().into_dyn()),
            b.mlp.c_fc.weight.to_f32().into_dyn(),
            CowArray::from(b.mlp.c_fc.bias.view().into_dyn()),
            b.mlp.c_proj.weight.to_f32().into_dyn(),
            CowArray::from(b.mlp.c_proj.bias.view().into_dyn()),
        ];
        out.extend(
            BLOCK_PARAMETERS
                .iter()
                .zip(tensors)
                .map(|(n, x)| (format!("h.{i}.{n}"), x)),
        );
    }
    out.push((
        "ln_f.weight".into(),
        CowArray::from(model.ln_f.weight.view().into_dyn()),
    ));
    out.push((
        "ln_f.bias".into(),
        CowArray::from(model.ln_f.bias.view().into_dyn()),
    ));
    if let Some(w) = &model.lm_head {
        out.push(("lm_head.weight".into(), w.to_f32().into_dyn()));
    }
    out
}

/// [`parameters`], mutable: the same names in the same order. A weight read
/// in place from a memory-mapped file is copied into memory the first time
/// ([`Matrix::view_mut`](crate::weights::Matrix::view_mut)); the file is never written.
pub fn parameters_mut(model: &mut Gpt2) -> Vec<(String, ArrayViewMutD<'_, f32>)> {
    let mut out = vec![
        ("wte.weight".to_string(), model.wte.view_mut().into_dyn()),
        ("wpe.weight".to_string(), model.wpe.view_mut().into_dyn()),
    ];
    for (i, b) in model.h.iter_mut().enumerate() {
        let tensors = [
            b.ln_1.weight.view_mut().into_dyn(),
            b.ln_1.bias.view_mut().into_dyn(),
            b.attn.c_attn.weight.view_mut().into_dyn(),
            b.attn.c_attn.bias.view_mut().into_dyn(),
            b.attn.c_proj.weight.view_mut().into_dyn(),
            b.attn.c_proj.bias.view_mut().into_dyn(),
            b.ln_2.weight.view_mut().into_dyn(),
            b.ln_2.bias.view_mut().into_dyn(),
            b.mlp.c_fc.weight.view_mut().into_dyn(),
            b.mlp.c_fc.bias.view_mut().into_dyn(),
            b.mlp.c_proj.weight.view_mut().into_dyn(),
            b.mlp.c_proj.bias.view_mut().into_dyn(),
        ];
        out.extend(
            BLOCK_PARAMETERS
                .iter()
                .zip(tensors)
                .map(|(n, x)| (format!("h.{i}.{n}"), x)),
        );
    }
    out.push((
        "ln_f.weight".into(),
        model.ln_f.weight.view_mut().into_dyn(),
    ));
    out.push(("ln_f.bias".into(), model.ln_f.bias.view_mut().into_dyn()));
    if let Some(w) = &mut model.lm_head {
        out.push(("lm_head.weight".into(), w.view_mut().into_dyn()));
    }
    out
}
