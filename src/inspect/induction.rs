//! Induction heads: heads that, at a token seen before, look at the token
//! that followed it last time (and so help predict that it comes again).
//!
//! The test of Olsson et al. (2022), *In-context Learning and Induction
//! Heads*: run `n` random tokens twice in a row, `ids = r ‖ r` (`[2n]`). At a
//! position `t ≥ n` of the second copy, the previous occurrence of `ids[t]`
//! is `t − n`, and the token after it is at `t − n + 1`. The **induction
//! score** of a head is its mean attention to that key over the second copy:
//!
//! ```text
//! score = 1/n · Σ_{t=n}^{2n−1} probs[t, t − n + 1]
//! ```
//!
//! 1 for a perfect induction head; a head that spreads its weight evenly
//! scores about `1/(1.5·n)` (a query at `t` sees `t + 1` keys).

use anyhow::{ensure, Result};
use ndarray::{Array2, Ix3};

use crate::model::Gpt2;
use crate::trace::Trace;

/// The induction score of every head, `[n_layer, n_head]`, on `r ‖ r` for
/// the `n` tokens `r` (definition in the [module doc](self)); all tokens of
/// `r` should differ, so that each has one previous occurrence.
pub fn induction_scores(model: &Gpt2, r: &[u32]) -> Result<Array2<f32>> {
    let (n, n_layer, n_head) = (r.len(), model.config.n_layer, model.config.n_head);
    ensure!(n >= 2, "an induction test needs at least 2 tokens, got {n}");
    let ids = [r, r].concat(); // [2n]
    let names: Vec<String> = (0..n_layer).map(|l| format!("h.{l}.attn.probs")).collect();
    let mut trace = Trace::names(&names);
    model.forward_traced(&ids, &mut trace)?;
    let mut score = Array2::zeros((n_layer, n_head));
    for (l, name) in names.iter().enumerate() {
        let probs = trace.tensors[name].view().into_dimensionality::<Ix3>()?; // [n_head, 2n, 2n]
        for h in 0..n_head {
            let sum: f32 = (n..2 * n).map(|t| probs[[h, t, t - n + 1]]).sum();
            score[[l, h]] = sum / n as f32;
        }
    }
    Ok(score)
}
