#!/usr/bin/env bash
# Fuzz the loaders and the tokenizer → forward path with cargo-fuzz (libFuzzer),
# on stable Rust: `--sanitizer none` (AddressSanitizer needs nightly; safe Rust
# needs it little: the fuzzers look for panics, aborts, hangs and memory blow-ups).
#
#   scripts/fuzz.sh                      # every target, 300 s each
#   scripts/fuzz.sh 60                   # every target, 60 s each
#   scripts/fuzz.sh 600 pickle config    # some targets
#
# Targets (fuzz/fuzz_targets/): safetensors, pytorch_bin, pickle, config,
# tokenize_forward. Seeds are copied from golden/ into fuzz/corpus/<target>/
# (git-ignored; the corpus grows across runs). A crash is saved in
# fuzz/artifacts/<target>/ and reproduced with
#   cargo fuzz run <target> --sanitizer none fuzz/artifacts/<target>/crash-...
# The script runs at low priority (nice 10) and stops at the first crash.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-300}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(safetensors pytorch_bin pickle config tokenize_forward)
fi

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

corpus() { mkdir -p "fuzz/corpus/$1" && echo "fuzz/corpus/$1"; }

seed() {
  local dir
  # safetensors: the small files only (a 10 MB seed would make every input 10 MB long).
  dir=$(corpus safetensors)
  cp golden/checkpoints/dtypes.safetensors "$dir/"
  for d in golden/bad/*/; do cp "$d/model.safetensors" "$dir/$(basename "$d").safetensors"; done

  dir=$(corpus pytorch_bin)
  cp golden/checkpoints/*.bin "$dir/"
  for d in golden/bad/*/; do cp "$d/pytorch_model.bin" "$dir/$(basename "$d").bin"; done

  dir=$(corpus config)
  cp golden/model/config.json "$dir/gpt2_test.json"
  for d in golden/bad/*/; do cp "$d/config.json" "$dir/$(basename "$d").json"; done

  # pickle: every data.pkl of the zip checkpoints, and the five pickles of each
  # legacy file one by one (Python's zipfile and pickletools do the splitting).
  dir=$(corpus pickle)
  if command -v python3 >/dev/null; then
    python3 - "$dir" golden/checkpoints/*.bin golden/bad/*/pytorch_model.bin <<'PY'
import io, pickletools, sys, zipfile
out, files = sys.argv[1], sys.argv[2:]
for path in files:
    name = path.replace("/", "_")
    data = open(path, "rb").read()
    if data[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as z:
                for entry in z.namelist():
                    if entry.endswith("data.pkl"):
                        open(f"{out}/{name}.pkl", "wb").write(z.read(entry))
        except zipfile.BadZipFile:
            pass
    elif data[:2] == b"\x80\x02":
        f = io.BytesIO(data)
        for i in range(5):
            start = f.tell()
            try:
                for _ in pickletools.genops(f):
                    pass
            except Exception:
                break
            open(f"{out}/{name}.{i}.pkl", "wb").write(data[start:f.tell()])
PY
  else
    cp golden/checkpoints/*legacy*.bin "$dir/"
  fi

  # tokenize_forward: the awkward strings of the tokenizer golden, one per file.
  dir=$(corpus tokenize_forward)
  if command -v python3 >/dev/null; then
    python3 - "$dir" <<'PY'
import json, sys
cases = json.load(open("golden/reference/tokenization.json"))["cases"]
for i, case in enumerate(cases):
    open(f"{sys.argv[1]}/case{i:03d}.txt", "w", encoding="utf-8").write(case["text"])
PY
  fi
  printf 'Hello, my dog is cute' >"$dir/hello.txt"
  printf 'caf\xc3\xa9 \xf0\x9f\x99\x82 \xe4\xb8\xad\xe6\x96\x87 <|endoftext|>  \n\t x' >"$dir/unicode.txt"
  printf '\xff\xfe broken \xc3' >"$dir/invalid_utf8.txt"
}

seed
for target in "${targets[@]}"; do
  echo "== $target: ${seconds}s"
  # -rss_limit_mb: a loader that allocates what a file merely claims shows up as an OOM crash.
  # -timeout: a single input taking more than 10 s is reported as a hang.
  nice -n 10 cargo fuzz run "$target" --sanitizer none -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
done
