#!/usr/bin/env bash
# Benchmark: roo-proxy against the mock upstream, and the mock alone, in one run.
# Builds release binaries, installs wrk if missing, runs scripts/bench.py, which prints
# the table and writes BENCHMARKS.md.  Not part of `cargo test`.
#
#   scripts/bench.sh            # full run, about 7 minutes on 2 cores
#   BENCH_SECONDS=3 BENCH_ROUNDS=1 scripts/bench.sh   # shorter runs, one per point
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: installing wrk"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --locked --bins --quiet
# 1,000 held streams need file descriptors on both sides.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 "$root/scripts/bench.py" "$@"
