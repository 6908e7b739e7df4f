//! The per-op golden files `golden/blocks/<case>.<tensor>.npy` that
//! `python_ref/blocks.py` writes, read by name (`golden("dot_1d.a")`).

use ndarray::{Array1, Array2, ArrayD, Ix1, Ix2};

use super::{golden_dir, read_f32};

/// `golden/blocks/<name>.npy`.
pub fn golden(name: &str) -> ArrayD<f32> {
    read_f32(golden_dir().join("blocks").join(format!("{name}.npy")))
}

pub fn golden1(name: &str) -> Array1<f32> {
    golden(name).into_dimensionality::<Ix1>().expect(name)
}

pub fn golden2(name: &str) -> Array2<f32> {
    golden(name).into_dimensionality::<Ix2>().expect(name)
}

/// A scalar, stored as a 1-element array.
pub fn golden_scalar(name: &str) -> f32 {
    let a = golden1(name);
    assert_eq!(a.len(), 1, "{name} should hold one number");
    a[0]
}
