#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ and runs each for SECONDS (default 60), one after another,
# starting from the seeds in fuzz/corpus/<target>/. Prints the executions of each target; exits
# non-zero if any target crashed (its input is kept in fuzz/artifacts/<target>/), ran no input,
# or is missing from the listing.
#
#   ./scripts/fuzz.sh [SECONDS]
#
# cargo fuzz drives libFuzzer. It builds on the stable toolchain because no sanitizer is asked
# for (`-s none`: AddressSanitizer needs nightly's -Zsanitizer, and safe Rust has little for it
# to find); coverage instrumentation and libFuzzer need only stable flags, so no
# RUSTC_BOOTSTRAP. Debug assertions and overflow checks are on. `--dev` uses fuzz/Cargo.toml's
# dev profile: the fuzzed code optimized, the rest not, so that a cold build stays short.
#
# What a run grows stays out of the repository: new inputs go to fuzz/target/grown/<target>/
# (kept between runs, so later runs start from everything found so far).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  SLUICE_SETUP_FUZZ=1 ./scripts/setup.sh
fi

build=(-s none --dev)
cd fuzz
cargo fuzz build "${build[@]}"

# Every [[bin]] in fuzz/Cargo.toml is a target: a listing that finds fewer fuzzed less than asked.
targets=$(cargo fuzz list)
want=$(grep -c '^\[\[bin\]\]' Cargo.toml)
have=$(printf '%s\n' "$targets" | grep -c . || true)
if [ "$have" -ne "$want" ] || [ "$have" -eq 0 ]; then
  echo "fuzz: cargo fuzz list named $have targets, fuzz/Cargo.toml declares $want" >&2
  exit 1
fi

mkdir -p target/logs
failed=()
total=0
for target in $targets; do
  grown=target/grown/$target
  log=target/logs/$target.log
  mkdir -p "$grown" "corpus/$target"
  # -timeout: one input taking seconds is a hang worth reporting; -rss_limit_mb: so is a
  # blow-up in memory. The grown corpus comes first: libFuzzer writes new inputs there.
  if cargo fuzz run "${build[@]}" "$target" "$grown" "corpus/$target" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    status=ok
  else
    status=CRASH
    failed+=("$target")
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  # A target that ran no input found nothing because it tried nothing: that is a failure too.
  if [ "$status" = ok ] && [ "${execs:-0}" -eq 0 ]; then
    status="RAN NOTHING"
    failed+=("$target")
  fi
  total=$((total + ${execs:-0}))
  printf 'fuzz: %-16s %12s executions in %ss  %s\n' "$target" "${execs:-?}" "$secs" "$status"
  if [ "$status" != ok ]; then
    grep -E -A12 "panicked at|ERROR: libFuzzer|SUMMARY|Test unit written" "$log" | head -40 >&2 || tail -40 "$log" >&2
  fi
done
printf 'fuzz: %d executions in all\n' "$total"

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes or empty runs in ${failed[*]}; inputs in fuzz/artifacts/, logs in fuzz/target/logs/" >&2
  echo "fuzz: replay one with: (cd fuzz && cargo fuzz run ${build[*]} TARGET artifacts/TARGET/FILE)" >&2
  exit 1
fi
