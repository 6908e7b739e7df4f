//! The data order: which tokens step `k` trains on, fixed so that a PyTorch
//! script can replay a run exactly.

use anyhow::{ensure, Result};
use ndarray::Array2;

/// Inputs and targets `[B, T]` of one batch: `targets[r][t]` is the token
/// that follows `inputs[r][t]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub inputs: Array2<u32>,
    pub targets: Array2<u32>,
}

/// The `T + 1` tokens from `s`: inputs `tokens[s .. s+T]`, targets `tokens[s+1 .. s+T+1]`.
fn window(tokens: &[u32], s: usize, t: usize) -> (&[u32], &[u32]) {
    (&tokens[s..s + t], &tokens[s + 1..s + t + 1])
}

/// The batch of step `k` (from 0): row `r` (from 0) starts at
/// `s = ((k·B + r)·T) mod (N − T − 1)`, `N = tokens.len()`; consecutive rows
/// and steps walk through the text `T` tokens at a time and wrap around.
/// An error unless `B, T ≥ 1` and `N ≥ T + 2`.
pub fn batch_at(tokens: &[u32], k: usize, b: usize, t: usize) -> Result<Batch> {
    ensure!(
        b >= 1 && t >= 1,
        "the batch and the sequence need at least 1 row and 1 token"
    );
    let n = tokens.len();
    ensure!(
        n >= t + 2,
        "the text has {n} tokens: too short for sequences of {t} tokens (at least {} needed)",
        t + 2
    );
    let period = n - t - 1;
    let mut inputs = Array2::zeros((b, t));
    let mut targets = Array2::zeros((b, t));
    for r in 0..b {
        // (k·B + r)·T mod period, without overflow for any k.
        let row = ((k as u128 * b as u128 + r as u128) * t as u128 % period as u128) as usize;
        let (x, y) = window(tokens, row, t);
        inputs.row_mut(r).assign(&ndarray::ArrayView1::from(x));
        targets.row_mut(r).assign(&ndarray::ArrayView1::from(y));
    }
    Ok(Batch { inputs, targets })
}

/// The text split for validation: the first 90% to train on and the last
/// 10% (`N / 10` tokens, rounded down) to measure.
pub fn split_validation(tokens: &[u32]) -> (&[u32], &[u32]) {
    tokens.split_at(tokens.len() - tokens.len() / 10)
}

/// The validation batches: consecutive, non-overlapping windows of `T`
/// inputs (and their `T` targets) from the start of `tokens`, as many as fit,
/// `B` rows per batch (the last batch may have fewer). An error when not one
/// window fits (`T + 1` tokens).
pub fn validation_batches(tokens: &[u32], b: usize, t: usize) -> Result<Vec<Batch>> {
    ensure!(
        b >= 1 && t >= 1,
        "the batch and the sequence need at least 1 row and 1 token"
    );
    let windows = tokens.len().saturating_sub(1) / t;
    ensure!(
        windows >= 1,
        "the validation text (the last 10%: {} tokens) is shorter than one sequence of {t} tokens \
         and its target",
        tokens.len()
    );
    let starts: Vec<usize> = (0..windows).map(|w| w * t).collect();
    Ok(starts
        .chunks(b)
        .map(|rows| {
            let mut inputs = Array2::zeros((rows.len(), t));
            let mut targets = Array2::zeros((rows.len(), t));
            for (r, &s) in rows.iter().enumerate() {
                let (x, y) = window(tokens, s, t);
                inputs.row_mut(r).assign(&ndarray::ArrayView1::from(x));
                targets.row_mut(r).assign(&ndarray::ArrayView1::from(y));
            }
            Batch { inputs, targets }
        })
        .collect())
}
