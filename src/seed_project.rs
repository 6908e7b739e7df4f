//! # Where the original C project went
//!
//! This crate grew out of a small learning project: GPT-2 inference first run
//! through `transformers` (`train_gpt2`, next-token prediction after
//! Andrej Karpathy's video), then its building blocks rewritten in plain C
//! "without any dependencies", each checked against PyTorch by a short Python
//! script. This page maps every file of that project to what replaces it here,
//! so a reader who knows the C files can find their Rust twins, their worked
//! examples and the tests that check them. (It holds no code: it is a page of
//! the `cargo doc` tour.)
//!
//! ## The C building blocks
//!
//! | C file | what it did | Rust module | functions | worked example |
//! |---|---|---|---|---|
//! | `dot_product.c` | 1-D dot product, then the 2-D product | [`blocks::linear`](mod@crate::blocks::linear) | [`dot`], [`matmul`], and GPT-2's linear layer [`linear`], [`conv1d`] | `cargo run --example dot_product` |
//! | `softmax.c` | softmax of a vector, then of each row of a matrix | [`blocks::softmax`](mod@crate::blocks::softmax) | [`softmax`], [`softmax_rows`], [`softmax_inplace`] | `cargo run --example softmax` |
//! | `scaled_dot_product_attention.c` | `softmax(q·kᵀ/√d)·v`, built from the blocks above | [`blocks::attention`](mod@crate::blocks::attention) | [`causal_scores`], [`scaled_dot_product_attention`], and the multi-head form GPT-2 runs, [`multi_head_attention`], [`multi_head_attention_with_maps`] | `cargo run --example scaled_dot_product_attention` |
//! | its utils: mean, variance, layer norm | the statistics of a row and the normalisation built on them | [`blocks::norm`](mod@crate::blocks::norm) | [`mean`], [`variance`] (biased, as `nn.LayerNorm` uses it), [`layer_norm`] | part 2 of `cargo run --example scaled_dot_product_attention` |
//! | (none: the activation came from `transformers`) | the MLP's non-linearity, `NewGELUActivation` | [`blocks::activation`](mod@crate::blocks::activation) | [`gelu_new`] and the others a config may name | |
//!
//! Each function's documentation carries its formula, its shapes and a small
//! example whose numbers come from PyTorch (the expression is in a comment
//! beside them); `cargo test` runs those examples too. The tests in
//! `tests/blocks.rs` check every block against PyTorch on the golden inputs:
//!
//! - **`dot_product.c`**: `dot_of_two_vectors_matches_torch`,
//!   `dot_of_single_elements_matches_torch`,
//!   `dot_with_cancelling_large_terms_matches_torch`,
//!   `matmul_of_non_square_matrices_matches_torch`,
//!   `matmul_of_a_single_row_matches_torch`,
//!   `conv1d_linear_matches_transformers_conv1d_module`,
//!   `conv1d_linear_of_one_token_matches_transformers_conv1d_module`.
//! - **`softmax.c`**: `softmax_of_a_vector_matches_torch`,
//!   `softmax_of_a_single_element_is_one`,
//!   `softmax_of_a_vector_far_below_zero_matches_torch`,
//!   `softmax_of_rows_matches_torch`,
//!   `softmax_of_rows_with_1e4_magnitudes_matches_torch`,
//!   `softmax_of_all_equal_rows_is_uniform`,
//!   `softmax_of_partially_masked_rows_gives_neg_inf_zero_probability`.
//! - **`scaled_dot_product_attention.c`**:
//!   `causal_attention_of_one_head_matches_torch_sdpa`,
//!   `causal_attention_of_a_single_token_returns_its_value`,
//!   `causal_attention_of_3_queries_against_7_keys_aligns_queries_to_the_end`,
//!   `causal_attention_of_1_query_against_5_keys_sees_every_key`,
//!   `two_head_attention_and_its_maps_match_torch`,
//!   `three_head_attention_and_its_maps_match_torch`,
//!   `multi_head_attention_of_a_single_token_matches_torch`,
//!   `multi_head_attention_of_3_queries_against_7_keys_matches_torch`,
//!   `multi_head_attention_of_1_query_against_5_keys_matches_torch`,
//!   `multi_head_attention_with_right_padding_masked_matches_torch`,
//!   `causal_scores_of_each_head_match_the_masked_scaled_scores`.
//! - **its utils**: `mean_matches_torch`, `mean_of_one_element_is_that_element`,
//!   `biased_variance_matches_torch_var_unbiased_false`,
//!   `biased_variance_of_one_element_is_zero`,
//!   `variance_of_values_near_1000_with_spread_0_1_matches_torch`,
//!   `layer_norm_matches_torch_layer_norm`,
//!   `layer_norm_of_one_row_matches_torch_layer_norm`,
//!   `layer_norm_of_near_constant_rows_where_eps_dominates_matches_torch`.
//! - **the activation**: `gelu_new_matches_transformers`,
//!   `gelu_pytorch_tanh_is_gelu_new_and_matches_transformers`,
//!   `exact_erf_gelu_matches_transformers`, `gelu_fast_matches_transformers`,
//!   `quick_gelu_matches_transformers`, `relu_matches_transformers`,
//!   `silu_matches_transformers`.
//!
//! Build and run: the C files were compiled one by one
//! (`gcc scaled_dot_product_attention.c -o out/scaled_dot_product_attention`);
//! here `cargo run --example NAME` builds and runs each worked example, and
//! `cargo test` checks every block.
//!
//! ## The PyTorch checks
//!
//! | Python script | what it did | replaced by |
//! |---|---|---|
//! | `dot_product.py` | the same products in PyTorch, to verify the C results | `python_ref/blocks.py`, `dot_cases`, `matmul_cases`, `linear_cases` (`torch.dot`, `@`, transformers' real `Conv1D` module) write `golden/blocks/dot_*.npy`, `matmul*.npy`, `conv1d*.npy`; the tests above compare with [`assert_close`](#how-the-comparison-works) |
//! | `scaled_dot_product.py` | attention (and its softmax, layer norm) in PyTorch | `python_ref/blocks.py`, `softmax_cases`, `stats_cases`, `layer_norm_cases`, `attention_cases` (`F.scaled_dot_product_attention` with the causal mask), `multi_head_cases` (heads split, attended and merged; the maps), `activation_cases` (`ACT2FN[name]`) |
//! | `train_gpt2` (inference with `transformers`) | the whole model's next-token prediction | `python_ref/export_model.py` records every activation of `GPT2LMHeadModel` through forward hooks; `tests/model_golden.rs` (`every_activation_matches_transformers_for_both_checkpoint_formats`, `last_position_argmax_and_top5_are_identical`, ...) compares them name by name, and `cargo run --release --example next_token -- "prompt"` is the prediction itself |
//!
//! Each Python case is named after the edge it probes: one element, more keys
//! than queries (`Tq < Tk`, as when decoding with a cache), rows of `±1e4`
//! that overflow without the max subtraction, all-equal rows, `-inf` from a
//! mask, a layer norm whose `ε` dominates the variance. The C checks compared a
//! few printed numbers; these compare every element.
//!
//! ### How the comparison works
//!
//! Every test goes through one helper, `assert_close(name, got, expected, tol)`
//! in `tests/common/mod.rs`: `|got − expected| ≤ atol + rtol·|expected|` for
//! each element, with named tolerances (`SINGLE_OP` for one block, `MODEL` for a
//! whole forward pass). A failure names the tensor, the worst element with both
//! values, and how many elements failed.
//!
//! ## The setup notes
//!
//! - The C project downloaded `pytorch_model.bin`, `vocab.json`, `merges.txt`,
//!   `config.json` and `tokenizer_config.json` by hand into
//!   `transformers/models/gpt2`, because loading through the `transformers`
//!   cache failed on package mismatches. Here the same files go in
//!   `models/gpt2/` (the README has the commands), and
//!   [`Gpt2::from_dir`](crate::Gpt2::from_dir) reads that very
//!   `pytorch_model.bin` (or `model.safetensors`) without Python:
//!   [`checkpoint`](crate::checkpoint).
//! - Its notes printed the model (`print(GPT2LMHeadModel)`) to break down the
//!   architecture: `wte`, `wpe`, `h` (12 × `GPT2Block`: `ln_1`, `attn.c_attn`,
//!   `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`), `ln_f`, `lm_head`.
//!   [`inspect::architecture`](crate::inspect::architecture) prints the same
//!   tree for whatever model is loaded (`cargo run --release --example
//!   architecture`), and the structs of [`model`](crate::model) carry exactly
//!   those names.
//! - Its list of differences from *Attention Is All You Need* (decoder only,
//!   no cross-attention; layer norms moved before attention and before the
//!   MLP; an extra layer norm before the head) is the diagram on the
//!   [crate's front page](crate).
//!
//! [`dot`]: crate::blocks::dot
//! [`matmul`]: crate::blocks::matmul
//! [`linear`]: fn@crate::blocks::linear
//! [`conv1d`]: crate::blocks::conv1d
//! [`softmax`]: fn@crate::blocks::softmax
//! [`softmax_rows`]: crate::blocks::softmax_rows
//! [`softmax_inplace`]: crate::blocks::softmax_inplace
//! [`causal_scores`]: crate::blocks::causal_scores
//! [`scaled_dot_product_attention`]: crate::blocks::scaled_dot_product_attention
//! [`multi_head_attention`]: crate::blocks::multi_head_attention
//! [`multi_head_attention_with_maps`]: crate::blocks::multi_head_attention_with_maps
//! [`mean`]: crate::blocks::mean
//! [`variance`]: crate::blocks::variance
//! [`layer_norm`]: crate::blocks::layer_norm
//! [`gelu_new`]: crate::blocks::gelu_new
