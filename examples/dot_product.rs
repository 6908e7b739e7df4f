//! The products every layer is made of, worked by hand: a 1-D dot product, a 2-D
//! matrix product, then the `Conv1D` linear layer `y = x·W + b` of GPT-2.
//!
//! ```text
//! cargo run --example dot_product
//! ```
//!
//! Small integers throughout, so every line can be checked with pencil and paper.

mod common;

use common::show::{num, show1, show2};
use gpt2_ndarray::reference::{conv1d, dot, matmul};
use gpt2_ndarray::weights::Conv1D;
use ndarray::array;

fn main() {
    // ---------------------------------------------------------------- 1-D
    println!("== 1. Dot product of two vectors: a · b = Σᵢ aᵢ·bᵢ\n");
    let a = array![1.0, 2.0, 3.0];
    let b = array![4.0, -5.0, 6.0];
    show1("a", &a);
    show1("b", &b);
    let products = &a * &b;
    show1("aᵢ·bᵢ", &products);
    let terms: Vec<String> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| format!("{}·{}", factor(*x), factor(*y)))
        .collect();
    println!("a · b = {} = {}\n", terms.join(" + "), num(products.sum()));
    println!(
        "dot(a, b) = {}   (shape [3] · [3] -> a scalar)\n",
        num(dot(a.view(), b.view()))
    );

    // ---------------------------------------------------------------- 2-D
    println!("== 2. Matrix product: C = A·B, Cᵢⱼ = Σₖ Aᵢₖ·Bₖⱼ = (row i of A) · (column j of B)\n");
    let a = array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]];
    let b = array![[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]];
    show2("A", &a);
    show2("B", &b);
    for i in 0..a.nrows() {
        for j in 0..b.ncols() {
            let terms: Vec<String> = (0..a.ncols())
                .map(|k| format!("{}·{}", factor(a[[i, k]]), factor(b[[k, j]])))
                .collect();
            let value = dot(a.row(i), b.column(j));
            println!(
                "C[{i},{j}] = A[{i},:] · B[:,{j}] = {} = {}",
                terms.join(" + "),
                num(value)
            );
        }
    }
    println!();
    println!("[2, 3]·[3, 2] -> [2, 2]: the inner sizes (3) must agree and disappear.");
    show2("C = matmul(A, B)", &matmul(a.view(), b.view()));

    // ---------------------------------------------------------------- Conv1D
    println!("== 3. GPT-2's linear layer (Conv1D): y = x·W + b\n");
    println!("Conv1D stores W as [in, out] (nn.Linear would store its transpose, [out, in]).");
    println!("Each row of x is one token; each column of W makes one output feature.\n");
    let x = array![[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]; // T = 2 tokens, in = 3
    let layer = Conv1D {
        weight: array![
            [1.0, 0.0, 2.0, 1.0],
            [0.0, 1.0, 1.0, -1.0],
            [1.0, 1.0, 0.0, 0.5]
        ]
        .into(),
        bias: array![0.5, 0.0, -1.0, 0.0],
    };
    show2("x   (T = 2 tokens, in = 3)", &x);
    show2("W   (in = 3, out = 4)", &layer.weight.to_owned());
    show1("b   (out = 4)", &layer.bias);
    let xw = matmul(x.view(), layer.weight.view());
    println!("[2, 3]·[3, 4] -> [2, 4]: x·W[t, o] = Σᵢ x[t, i]·W[i, o]");
    show2("x·W", &xw);
    println!("(b is added to every row: broadcast over the T tokens)");
    show2("x·W + b", &(&xw + &layer.bias));
    let y = conv1d(x.view(), &layer);
    show2("conv1d(x, layer)", &y);
    let by_parts = matmul(x.view(), layer.weight.view()) + &layer.bias;
    assert_eq!(y, by_parts);
    println!("matmul(x, W) + b gives the same [2, 4] result.");
}

/// [`num`] in parentheses when negative, for products such as `2·(-5)`.
fn factor(x: f32) -> String {
    if x < 0.0 {
        format!("({})", num(x))
    } else {
        num(x)
    }
}
