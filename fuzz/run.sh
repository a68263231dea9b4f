#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each (default 60), two at a time
# (FUZZ_JOBS), on nightly, starting from the committed corpus fuzz/corpus/<target>/.
# New inputs go to target/corpus/<target>/ (never into the committed corpus); a crash
# is saved under fuzz/artifacts/<target>/, its log printed, and the script fails.
#
#   fuzz/run.sh [SECONDS] [TARGET ...]
#
# Built with debug assertions and overflow checks, without a sanitizer: the workspace
# denies unsafe code, so what a decoder can do wrong is panic (an index, an overflow,
# an assertion, a failed round trip), which libFuzzer reports as a crash.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
jobs="${FUZZ_JOBS:-2}"
flags=(--release --debug-assertions --sanitizer none)
if (($#)); then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi

start=$(date +%s)
cargo +nightly fuzz build "${flags[@]}"
echo "fuzz: built ${#targets[@]} targets in $(($(date +%s) - start)) s"

mkdir -p target/logs
run_one() {
    local t="$1"
    mkdir -p "target/corpus/$t" "artifacts/$t"
    if cargo +nightly fuzz run "${flags[@]}" "$t" "target/corpus/$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        > "target/logs/$t.log" 2>&1; then
        echo "fuzz: $t ok: $(grep -m1 'stat::number_of_executed_units' "target/logs/$t.log" \
            | awk '{print $2}') runs in ${secs} s"
    else
        echo "fuzz: $t FAILED; its log ends:"
        tail -40 "target/logs/$t.log"
        return 1
    fi
}
export -f run_one
export secs
export flags_str="${flags[*]}"
start=$(date +%s)
status=0
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'flags=($flags_str); run_one "$@"' _ {} \
    || status=1
echo "fuzz: ran ${#targets[@]} targets in $(($(date +%s) - start)) s"
exit "$status"
