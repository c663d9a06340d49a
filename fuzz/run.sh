#!/bin/bash
# Fuzzes every parser of untrusted input (the functions of
# tests/src/fuzzing.rs, one cargo-fuzz target each) for a bounded time
# each, starting from its stored corpus, and prints a table of target,
# runs and crashes. Exits non-zero when any target crashed; the input that
# did it is in fuzz/artifacts/TARGET/, to be added to fuzz/corpus/TARGET/
# (where the workspace's tests replay it) once the parser is fixed.
#
# Usage: fuzz/run.sh [SECONDS_PER_TARGET [TARGET...]]   (default 60, all)
#
# Stable toolchain: no sanitizer (`--sanitizer none`), but with debug
# assertions, so that an arithmetic overflow is a crash. The first build
# compiles RocksDB (every target links metad): some 20 minutes on two
# cores, in its own target directory (FUZZ_TARGET_DIR, default
# fuzz/target), never the workspace's: cargo-fuzz's flags differ. To
# link the RocksDB a workspace build made instead (same sources, same
# flags; no sanitizer instruments C++ here), point librocksdb-sys at the
# directory holding its librocksdb.a, e.g.
#   ROCKSDB_STATIC=1 ROCKSDB_LIB_DIR=/var/tmp/grid-target/release/build/librocksdb-sys-HASH/out
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-60}
shift || true
. "$HOME/.cargo/env" 2>/dev/null || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$here/target}
cd "$here"

flags=(--release --sanitizer none --debug-assertions)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
nice -n 19 cargo fuzz build "${flags[@]}"
bin=$CARGO_TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release

# New inputs a run finds go to a scratch directory (the first corpus
# directory is where libFuzzer writes), so the stored corpus stays the
# small, reviewed set that CI replays.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0
rows=()
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "artifacts/$t"
    log=$scratch/$t.log
    set +e
    nice -n 19 "$bin/$t" "$scratch/$t" "corpus/$t" \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    crashes=0
    if [ "$rc" -ne 0 ]; then
        crashes=1
        failed=1
        echo "== $t crashed (exit $rc):" >&2
        grep -E "panicked|ERROR: libFuzzer|Test unit written" "$log" >&2 || tail -20 "$log" >&2
    fi
    rows+=("$(printf '%-22s %12s %8s' "$t" "${runs:-?}" "$crashes")")
done
printf '%-22s %12s %8s\n' target runs crashes
printf '%s\n' "${rows[@]}"
exit "$failed"
