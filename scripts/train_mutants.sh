#!/usr/bin/env bash
# Show that tests/train.rs catches a wrong training step: each deliberate mistake below is put
# into src/train/ in turn, `cargo test --test train` must then fail, and the file is restored
# (also on Ctrl-C). Exits non-zero if a mutant survives.
#
#   scripts/train_mutants.sh
#
# The mutants:
#   no_scale      the fast attention backward forgets the scale (1/√d) on ∂scores
#   transposed    the fast attention backward takes ∂k = ∂S·q instead of ∂Sᵀ·q
#   tied_head     the tied head's gradient is not added into wte
#   decay_all     weight decay on every parameter (biases and layer norms too)
#   warmup        the warm-up ramps as lr·(k+1)/warmup instead of lr·(k+1)/(warmup+1)
#   data_order    the targets are the inputs (not shifted by one)
#   adam_moment   the first moment is 0.01% off
set -euo pipefail
cd "$(dirname "$0")/.."

test_target=train
source scripts/mutants-lib.sh

mutant no_scale src/train/step.rs \
  '*ds = scale * p * (*ds - dot)' \
  '*ds = p * (*ds - dot)'
mutant transposed src/train/step.rs \
  'let dk = mm(ds.t(), q);' \
  'let dk = mm(ds.view(), q);'
mutant tied_head src/train/step.rs \
  'None => dhead.clone(),' \
  'None => Array2::zeros(model.wte.dim()),'
mutant decay_all src/train/optim.rs \
  'ndim >= 2' \
  'ndim >= 1'
mutant warmup src/train/optim.rs \
  'self.lr * (k + 1) as f64 / (self.warmup + 1) as f64' \
  'self.lr * (k + 1) as f64 / self.warmup as f64'
mutant data_order src/train/data.rs \
  '(&tokens[s..s + t], &tokens[s + 1..s + t + 1])' \
  '(&tokens[s..s + t], &tokens[s..s + t])'
mutant adam_moment src/train/optim.rs \
  '*m = one_minus_b1.mul_add(g - *m, *m);' \
  '*m = one_minus_b1.mul_add(g - *m, *m) * 1.0001;'

report
