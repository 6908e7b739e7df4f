//! Softmax worked by hand: turn a row of scores into probabilities.
//!
//! ```text
//! cargo run --example softmax
//! ```
//!
//! `softmax(x)ᵢ = exp(xᵢ - m) / Σⱼ exp(xⱼ - m)` with `m = maxⱼ xⱼ`: first on one
//! vector step by step, then on each row of a matrix, then why `m` is subtracted
//! (a row of 1000s) and what a masked `-inf` score becomes.

mod common;

use common::show::{num, show1, show2};
use gpt2_ndarray::reference::{softmax, softmax_rows};
use ndarray::{array, Array1, Axis};

fn main() {
    // ---------------------------------------------------------------- 1-D
    println!("== 1. Softmax of a vector, step by step\n");
    let x = array![2.0, 1.0, 0.0, 1.0];
    show1("x", &x);
    let p = by_hand(&x);
    show1("softmax(x) from the blocks", &softmax(x.view()));
    println!("The largest score gets the largest probability, equal scores equal ones,");
    println!("and the probabilities sum to {}.\n", num(p.sum()));

    // ---------------------------------------------------------------- 2-D
    println!(
        "== 2. Softmax of each row of a matrix (attention does this to its [Tq, Tk] scores)\n"
    );
    let x = array![[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 3.0, 1.0]];
    show2("X", &x);
    let p = softmax_rows(x.view());
    show2("softmax_rows(X)   (each row on its own)", &p);
    show1("row sums", &p.sum_axis(Axis(1)));
    println!("Row 1 has equal scores, so it is uniform: 1/3 each.\n");

    // ---------------------------------------------------------------- why the max
    println!("== 3. Why the max is subtracted\n");
    let x = array![1000.0, 999.0, 998.0, 999.0];
    show1("x", &x);
    let naive = x.mapv(f32::exp);
    show1(
        "exp(x) without the shift: exp(89) already overflows f32",
        &naive,
    );
    show1("exp(x) / Σ exp(x) = inf / inf", &(&naive / naive.sum()));
    println!("Subtracting m = max(x) multiplies top and bottom by exp(-m), which cancels,");
    println!("and makes every exponent <= 0, so exp(...) lies in (0, 1]:\n");
    by_hand(&x);
    show1("softmax(x) from the blocks", &softmax(x.view()));
    println!("Same as softmax([2, 1, 0, 1]) of part 1: softmax only sees differences.\n");

    // ---------------------------------------------------------------- -inf
    println!("== 4. A masked entry: -inf becomes probability 0\n");
    println!("The causal mask sets the scores of future tokens to -inf before the softmax:\n");
    let x = array![2.0, 1.0, f32::NEG_INFINITY];
    show1("x", &x);
    by_hand(&x);
    show1("softmax(x) from the blocks", &softmax(x.view()));
    println!("exp(-inf) = 0: the masked entry gets nothing, the others share all of it");
    println!("(the same as softmax([2, 1]) = [0.7311, 0.2689]).\n");
    let all_masked = array![f32::NEG_INFINITY, f32::NEG_INFINITY];
    show1(
        "softmax([-inf, -inf])   (nothing visible: zeros here, NaN in PyTorch)",
        &softmax(all_masked.view()),
    );
}

/// Softmax of `x` one printed step at a time; returns the probabilities.
fn by_hand(x: &Array1<f32>) -> Array1<f32> {
    let m = x.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    println!("m = max(x) = {}\n", num(m));
    let shifted = x.mapv(|v| v - m);
    show1("x - m", &shifted);
    let e = shifted.mapv(f32::exp);
    show1("exp(x - m)", &e);
    let sum = e.sum();
    let terms: Vec<String> = e.iter().map(|&v| num(v)).collect();
    println!("Σ exp(x - m) = {} = {}\n", terms.join(" + "), num(sum));
    let p = &e / sum;
    show1("p = exp(x - m) / Σ", &p);
    p
}
