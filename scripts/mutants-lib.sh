# Sourced by scripts/*_mutants.sh: put one deliberate mistake at a time into the source, run a
# test target that must then fail, and restore the file (also on Ctrl-C).
#
#   test_target=backward           # the `cargo test --test` target that must catch each mutant
#   source "$(dirname "$0")/mutants-lib.sh"
#   mutant NAME FILE 'exact text' 'its mutation'
#   report                         # exits non-zero if a mutant survived

file=""
restore() { if [ -n "$file" ] && [ -f "$file.orig" ]; then mv "$file.orig" "$file"; fi; }
trap restore EXIT INT TERM

survivors=0
mutant() {
  local name=$1 from=$3 to=$4
  file=$2
  local text
  text=$(<"$file")
  [[ $text == *"$from"* ]] || { echo "$name: the line to mutate is not in $file"; exit 2; }
  cp "$file" "$file.orig"
  printf '%s\n' "${text/"$from"/"$to"}" >"$file"
  if cargo test --test "$test_target" >"target/mutant-$name.log" 2>&1; then
    echo "$name: SURVIVED (the tests passed with the mutation)"
    survivors=$((survivors + 1))
  else
    echo "$name: caught, failing:"
    grep '^test .* FAILED$' "target/mutant-$name.log" | sed 's/^/    /' || true
  fi
  restore
  file=""
}

report() {
  [ "$survivors" -eq 0 ] || { echo "$survivors mutant(s) survived"; exit 1; }
  echo "every mutant was caught"
}
