//! Printing small arrays the way a person writes them, for the worked examples.

use ndarray::{Array1, Array2};

/// A number as a person would write it: at most 4 decimals, no trailing zeros.
pub fn num(x: f32) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let s = format!("{x:.4}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

pub fn row(values: impl IntoIterator<Item = f32>) -> String {
    let cells: Vec<String> = values
        .into_iter()
        .map(|v| format!("{:>8}", num(v)))
        .collect();
    format!("[{} ]", cells.join(""))
}

pub fn show1(name: &str, a: &Array1<f32>) {
    println!(
        "{name}   shape {:?}\n    {}\n",
        a.shape(),
        row(a.iter().copied())
    );
}

pub fn show2(name: &str, a: &Array2<f32>) {
    println!("{name}   shape {:?}", a.shape());
    for r in a.rows() {
        println!("    {}", row(r.iter().copied()));
    }
    println!();
}
