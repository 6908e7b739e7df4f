#!/usr/bin/env bash
# Show that tests/backward.rs catches a wrong backward pass: each deliberate mistake below is
# put into the source in turn, `cargo test --test backward` must then fail, and the file is
# restored (also on Ctrl-C). Exits non-zero if a mutant survives.
#
#   scripts/backward_mutants.sh
#
# The mutants (the issue's examples of a wrong backward):
#   no_scale      attention_head_backward forgets the 1/√d (the scale) on ∂(q·kᵀ)
#   transposed    conv1d_backward returns ∂W transposed ([out, in] instead of Conv1D's [in, out])
#   tied_head     the tied head's gradient is not added into wte (only the embedding's rows are)
set -euo pipefail
cd "$(dirname "$0")/.."

test_target=backward
source scripts/mutants-lib.sh

mutant no_scale src/reference/attention.rs \
  'let d_qk = softmax_rows_backward(probs, d_probs.view()) * scale;' \
  'let d_qk = softmax_rows_backward(probs, d_probs.view());'
mutant transposed src/reference/linear.rs \
  '(dx, Conv1DGradients { weight, bias })' \
  '(dx, Conv1DGradients { weight: weight.reversed_axes(), bias })'
mutant tied_head src/reference/gpt2.rs \
  'None => grads.wte += &d_head,' \
  'None => {}'

report
