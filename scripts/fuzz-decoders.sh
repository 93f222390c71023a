#!/usr/bin/env bash
# Fuzzes the protocol decoders of crates/protocol with libFuzzer (cargo-fuzz), for a
# bounded time: the Engine.IO packet and polling-payload decoders, the Socket.IO packet
# decoder (and event splitting, re-encoding, requests from events), and the native
# frame parser. The targets and their seed corpus are in fuzz/ (a crate of its own,
# outside the main workspace, with its own Cargo.lock).
#
#   FUZZ_SECS   seconds of fuzzing per target (default 60); 0 only replays
#   FUZZ_TARGETS  targets to run (default: all three)
#
# Order: install cargo-fuzz if missing, build, replay every kept crash of
# fuzz/regressions/<target>/, then fuzz each target from a copy of its seed corpus
# fuzz/corpus/<target>/ (new inputs go to the copy, never into the repository).
# A crash fails the run and leaves its input in fuzz/artifacts/<target>/ (ignored by git).
#
# Stable toolchain only: cargo-fuzz defaults to AddressSanitizer, whose -Zsanitizer flag
# needs nightly. With `--sanitizer none` every flag it passes is stable
# (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*, -Cdebug-assertions,
# --cfg fuzzing), so no RUSTC_BOOTSTRAP is needed. The decoders are safe Rust, so their
# bugs show as panics, which libFuzzer reports without a sanitizer: the build is
# optimized with debug assertions and overflow checks on. (ASan would only add checks
# of the unsafe code inside dependencies such as serde_json.)
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECS=${FUZZ_SECS:-60}
read -r -a targets <<<"${FUZZ_TARGETS:-engineio_packet socketio_packet native_frame}"
build_flags=(--sanitizer none)

if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

echo "== build fuzz targets (fuzz/, stable, no sanitizer)"
# cargo fuzz has no --locked: check that fuzz/Cargo.lock needs no change first.
cargo fetch --locked --manifest-path fuzz/Cargo.toml
cargo fuzz build "${build_flags[@]}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
touch "$work/start"
failed=()

# Runs one target under libFuzzer: `run TARGET LOG INPUTS... -- LIBFUZZER_FLAGS...`.
run() {
  local target=$1 log=$2
  shift 2
  cargo fuzz run "${build_flags[@]}" "$target" "$@" >"$log" 2>&1
}

new_artifacts() {
  find "fuzz/artifacts/$1" -type f -newer "$work/start" 2>/dev/null || true
}

# Tells what crashed: `report_crash TARGET LOG replay|fuzz`.
report_crash() {
  local target=$1 log=$2 mode=$3 artifacts
  failed+=("$target")
  # The input run (replays), the panic (place and message, no backtrace), libFuzzer's verdict.
  grep -E '^Running: ' "$log" | tail -1 >&2 || true
  sed -n '/panicked at/,/^stack backtrace:/p' "$log" | grep -v '^stack backtrace:' | head -20 >&2
  grep -E 'ERROR: libFuzzer|Test unit written to|^Base64: ' "$log" | head -10 >&2 || true
  if ! grep -qE 'panicked at|ERROR: libFuzzer' "$log"; then
    tail -20 "$log" >&2 # not a crash of the target (a build error, a bad flag): all of it
  fi
  if [ "$mode" = replay ]; then
    echo "!! $target: a kept input of fuzz/regressions/$target/ fails again (named above)." >&2
    echo "   Reproduce: cargo fuzz run ${build_flags[*]} $target <input>" >&2
    return
  fi
  artifacts=$(new_artifacts "$target")
  for f in $artifacts; do
    echo "   input ($(wc -c <"$f") bytes): $(head -c 300 "$f" | cat -v)" >&2
  done
  echo "!! $target: the crashing input is in ${artifacts:-fuzz/artifacts/$target/ (none written: see the log above)}" >&2
  echo "   Reproduce: cargo fuzz run ${build_flags[*]} $target <input>" >&2
  echo "   Keep it as a test (this script replays it before fuzzing from then on):" >&2
  echo "     mkdir -p fuzz/regressions/$target && cp <input> fuzz/regressions/$target/" >&2
}

shopt -s nullglob
for target in "${targets[@]}"; do
  kept=(fuzz/regressions/"$target"/*)
  if [ "${#kept[@]}" -gt 0 ]; then
    echo "== $target: replaying ${#kept[@]} kept input(s) of fuzz/regressions/$target/"
    log="$work/$target.replay.log"
    # Files (not directories) make libFuzzer run each input once and stop.
    if ! run "$target" "$log" "${kept[@]}" -- -timeout=10; then
      report_crash "$target" "$log" replay
      continue
    fi
  fi
  if [ "$FUZZ_SECS" -eq 0 ]; then
    continue
  fi

  echo "== $target: fuzzing for ${FUZZ_SECS}s from fuzz/corpus/$target/"
  corpus="$work/corpus-$target"
  mkdir -p "$corpus"
  cp -R "fuzz/corpus/$target/." "$corpus/"
  dict=()
  if [ -f "fuzz/dicts/$target.dict" ]; then
    dict=(-dict="fuzz/dicts/$target.dict")
  fi
  log="$work/$target.log"
  if run "$target" "$log" "$corpus" -- \
    -max_total_time="$FUZZ_SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${dict[@]}"; then
    runs=$(awk '/^stat::number_of_executed_units:/ {print $2}' "$log")
    rate=$(awk '/^stat::average_exec_per_sec:/ {print $2}' "$log")
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1)
    echo "   $target: ${runs:-?} runs, ${rate:-?} exec/s, $cov, no crash"
  else
    report_crash "$target" "$log" fuzz
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "decoder fuzzing failed: ${failed[*]}" >&2
  exit 1
fi
echo "decoder fuzzing: ${#targets[@]} targets, no crash"
