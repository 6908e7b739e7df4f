#!/usr/bin/env bash
# Run the checkpoint and bad-input tests under valgrind's memcheck: every
# invalid read or write, use of uninitialised memory, or leak of a definitely
# lost block fails the run.
#
#   scripts/valgrind.sh                  # bad_input, pytorch_bin, config, mutation
#   scripts/valgrind.sh bad_input        # some test binaries only
#
# The crate's only `unsafe` is the memory map of src/checkpoint/safetensors.rs;
# this checks it, and the C and C++ code below us (none today but libc), on
# the hostile and damaged files of the tests. The mutation test runs a tenth
# of its cases (MUTATION_CASES=0.1): memcheck is ~30x slower.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }

tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
  tests=(bad_input pytorch_bin config mutation)
fi

for test in "${tests[@]}"; do
  # The path of the test binary cargo builds (the dev profile, as `cargo test`).
  binary=$(cargo test --no-run --message-format=json --test "$test" 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
  [ -n "$binary" ] || { echo "cannot build test $test" >&2; exit 1; }
  echo "== valgrind $test ($binary)"
  # One test thread: memcheck serialises threads anyway, and the output reads in order.
  MUTATION_CASES=0.1 valgrind --error-exitcode=1 --leak-check=full --show-leak-kinds=definite \
    --errors-for-leak-kinds=definite \
    --track-origins=yes --quiet "$binary" --test-threads=1
done
echo "valgrind: no errors"
