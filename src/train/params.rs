//! A model's parameters by state-dict name, to read and to update, as `f32`
//! arrays: [`Gpt2::parameters`] with half-precision weights upcast.

use ndarray::{ArrayViewMutD, CowArray, IxDyn};

use crate::model::{Gpt2, Parameter, ParameterMut};

/// Every parameter of `model` by its state-dict name, in the order of
/// [`Gpt2::parameters`] and of
/// [`Gradients::named`](crate::reference::Gradients::named). Weights stored
/// in half precision are upcast copies; the others are views.
pub fn parameters(model: &Gpt2) -> Vec<(String, CowArray<'_, f32, IxDyn>)> {
    model
        .parameters()
        .into_iter()
        .map(|(name, p)| {
            let x = match p {
                Parameter::Matrix(m) => m.to_f32().into_dyn(),
                Parameter::Vector(v) => CowArray::from(v.view().into_dyn()),
            };
            (name, x)
        })
        .collect()
}

/// [`parameters`], mutable: the same names in the same order. A weight read
/// in place from a memory-mapped file, or stored in half precision, is
/// copied into memory as `f32` the first time
/// ([`Matrix::view_mut`](crate::weights::Matrix::view_mut)); the file is never written.
pub fn parameters_mut(model: &mut Gpt2) -> Vec<(String, ArrayViewMutD<'_, f32>)> {
    model
        .parameters_mut()
        .into_iter()
        .map(|(name, p)| {
            let x = match p {
                ParameterMut::Matrix(m) => m.view_mut().into_dyn(),
                ParameterMut::Vector(v) => v.view_mut().into_dyn(),
            };
            (name, x)
        })
        .collect()
}
