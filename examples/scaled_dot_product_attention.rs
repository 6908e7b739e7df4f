//! Causal scaled dot-product attention worked by hand, then layer norm and two heads.
//!
//! ```text
//! cargo run --example scaled_dot_product_attention
//! ```
//!
//! `Attention(q, k, v) = softmax(q·kᵀ/√d + M)·v`, `M` the causal mask (0 where a
//! query may look, `-inf` where it would see the future). Three tokens, two
//! features: every number fits on a page.

mod common;

use common::show::{num, show1, show2};
use gpt2_ndarray::reference::{
    attention_head, layer_norm, matmul, mean, merge_heads, multi_head_attention, softmax_rows,
    split_heads, variance,
};
use gpt2_ndarray::weights::LayerNorm;
use ndarray::{array, concatenate, s, Array1, Axis};

fn main() {
    single_head();
    layer_norm_then_two_heads();
}

fn single_head() {
    println!("== 1. One head: T = 3 tokens, d = 2 features\n");
    let q = array![[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]];
    let k = array![[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]];
    let v = array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]];
    show2("q   (what each token looks for)", &q);
    show2("k   (what each token offers)", &k);
    show2("v   (what each token passes on)", &v);

    println!("-- scores: S = q·kᵀ, S[i,j] = qᵢ · kⱼ   [3, 2]·[2, 3] -> [3, 3]\n");
    let scores = matmul(q.view(), k.t());
    for (i, j) in [(1, 0), (1, 1), (2, 2)] {
        println!(
            "S[{i},{j}] = q{i} · k{j} = {}·{} + {}·{} = {}",
            num(q[[i, 0]]),
            num(k[[j, 0]]),
            num(q[[i, 1]]),
            num(k[[j, 1]]),
            num(scores[[i, j]])
        );
    }
    println!();
    show2("S", &scores);

    let d = q.ncols();
    let scale = 1.0 / (d as f32).sqrt();
    println!(
        "-- scale: 1/√d = 1/√{d} = {}, so the scores' spread does not grow with d\n",
        num(scale)
    );
    show2("S / √d", &(&scores * scale));

    println!("-- causal mask: query i may look at keys j <= i only (not at the future)\n");
    let head = attention_head(q.view(), k.view(), v.view(), scale);
    let masked = head.scores;
    show2("S / √d + M   (attention_head(..).scores)", &masked);

    println!("-- softmax of each row: P[i, :] are the weights query i gives to the values\n");
    let p = softmax_rows(masked.view());
    show2("P = softmax(S / √d + M)", &p);
    println!(
        "Row 0 can only see token 0: weight 1. Row 1: softmax([0, 1.4142]) = [0.1956, 0.8044].\n"
    );

    println!("-- output: out = P·v, out[i] = Σⱼ P[i,j]·vⱼ   [3, 3]·[3, 2] -> [3, 2]\n");
    let out = matmul(p.view(), v.view());
    for i in 0..3 {
        let terms: Vec<String> = (0..=i)
            .map(|j| {
                format!(
                    "{}·[{}, {}]",
                    num(p[[i, j]]),
                    num(v[[j, 0]]),
                    num(v[[j, 1]])
                )
            })
            .collect();
        println!(
            "out[{i}] = {} = [{}, {}]",
            terms.join(" + "),
            num(out[[i, 0]]),
            num(out[[i, 1]])
        );
    }
    println!();
    show2("attention_head(q, k, v, 1/√d).out", &head.out);
    assert_eq!(head.out, out);
}

fn layer_norm_then_two_heads() {
    println!("== 2. Layer norm, then two heads (GPT-2: attn(ln_1(x)))\n");
    let x = array![
        [2.0, 2.0, 4.0, 4.0],
        [0.0, 4.0, 4.0, 0.0],
        [1.0, 3.0, 5.0, 7.0]
    ];
    show2("x   (T = 3 tokens, C = 4 features)", &x);

    println!("-- layer norm of each row: yᵢ = (xᵢ - μ) / √(σ² + ε) · γᵢ + βᵢ\n");
    let mu: Array1<f32> = x.rows().into_iter().map(mean).collect();
    let var: Array1<f32> = x.rows().into_iter().map(variance).collect();
    show1("μ = mean of each row", &mu);
    show1(
        "σ² = Σ(x - μ)² / C   (biased: divide by C = 4, not C - 1)",
        &var,
    );
    let centered = &x - &mu.view().insert_axis(Axis(1));
    show2("x - μ", &centered);
    let ln = LayerNorm {
        weight: Array1::ones(4),
        bias: Array1::zeros(4),
        eps: 1e-5,
    };
    let std = var.mapv(|v| (v + ln.eps).sqrt());
    show1("√(σ² + ε), ε = 1e-5", &std);
    println!("(γ = 1 and β = 0 here; a trained model learns them)\n");
    let h = layer_norm(x.view(), &ln);
    show2("h = layer_norm(x)   (each row: mean 0, variance 1)", &h);

    println!("-- two heads: each works on its own slice of the C = 4 columns (d = C / 2 = 2)\n");
    println!("In GPT-2, q, k, v come from h through c_attn (a Conv1D); here q = k = v = h.\n");
    let (n_head, d) = (2, 2);
    let scale = 1.0 / (d as f32).sqrt();
    let heads = split_heads(h.view(), n_head); // [T, C] -> [n_head, T, d]
    let attn = multi_head_attention(heads.view(), heads.view(), heads.view(), scale);
    let merged = merge_heads(attn.out.view()); // [n_head, T, d] -> [T, C]
    let mut outs = Vec::new();
    for head in 0..n_head {
        let cols = s![.., head * d..(head + 1) * d];
        let hh = h.slice(cols).to_owned();
        println!("head {head}: columns {}..{}", head * d, (head + 1) * d);
        show2(&format!("q = k = v (head {head})"), &hh);
        show2(
            &format!("P (head {head})"),
            &attn.probs.index_axis(Axis(0), head).to_owned(),
        );
        let out = attention_head(hh.view(), hh.view(), hh.view(), scale).out;
        show2(&format!("out (head {head}) = P·v"), &out);
        outs.push(out);
    }
    let by_hand = concatenate(Axis(1), &[outs[0].view(), outs[1].view()]).unwrap();
    show2(
        "merge: [out (head 0) | out (head 1)]   2 × [3, 2] -> [3, 4]",
        &by_hand,
    );
    show2(
        "merge_heads(multi_head_attention(split_heads(h) ×3))",
        &merged,
    );
    assert_eq!(by_hand, merged);
}
