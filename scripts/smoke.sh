#!/usr/bin/env bash
# Smoke test: build the release binaries, start roo-proxy in front of the mock upstream
# on 127.0.0.1, and check with curl a plain request, a streamed one and a key rotation.
# Usage: scripts/smoke.sh   (needs cargo and curl; exits non-zero on the first failure)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --locked --bins --quiet
bin="$root/target/release"

work=$(mktemp -d)
name=smoke wait_tenths=100 curl_time=10
# shellcheck source=scripts/smoke-lib.sh
. "$root/scripts/smoke-lib.sh"
cleanup() {
  stop_started
  rm -rf "$work"
}
trap cleanup EXIT

printf '{"keys":[{"key":"%s","label":"one"},{"key":"%s","label":"two"}]}\n' "$key1" "$key2" > "$work/keys.json"

"$bin/mock-upstream" > "$work/mock.out" &
pids+=($!)
mock_port=$(port_of "$work/mock.out")

(cd "$work" && exec "$bin/roo-proxy" --port 0 --upstream "http://127.0.0.1:$mock_port/api/v1") \
  > "$work/proxy.out" 2> "$work/proxy.log" &
pids+=($!)
port=$(port_of "$work/proxy.out")
base="http://127.0.0.1:$port"
echo "smoke: $(cat "$work/proxy.out")"

check_requests "$base" "$mock_port"
check_no_key_printed "$key1" "$key2"

echo "smoke: $passed passed, 0 failed"
