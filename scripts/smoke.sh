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
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # The proxy saves its state file as it stops: let it finish before the folder goes.
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "smoke: FAIL: $*" >&2
  [ -f "$work/proxy.log" ] && sed 's/^/  proxy log: /' "$work/proxy.log" >&2
  exit 1
}

# Waits (up to 10 s) for a process's start line and prints its port.
port_of() {
  local file=$1
  for _ in $(seq 1 100); do
    if grep -q '127.0.0.1:' "$file" 2>/dev/null; then
      grep -o '127\.0\.0\.1:[0-9]*' "$file" | head -n1 | cut -d: -f2
      return 0
    fi
    sleep 0.1
  done
  fail "no start line in $file"
}

key1="sk-or-v1-smoke000000000000000000000000000000000000000000000000000001"
key2="sk-or-v1-smoke000000000000000000000000000000000000000000000000000002"
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

# 1. A plain chat completion, with a dummy client key as Roo Code sends one.
out=$(curl -sS --max-time 10 -H 'Authorization: Bearer dummy' -H 'Content-Type: application/json' \
  -d '{"model":"mock/model","messages":[{"role":"user","content":"hi"}]}' "$base/v1/chat/completions")
grep -q '"Hello from the mock"' <<<"$out" || fail "plain request: $out"
echo "smoke: ok   plain request"

# 2. A streamed one: every event and the end marker arrive.
out=$(curl -sS -N --max-time 10 -H 'Content-Type: application/json' \
  -d '{"model":"mock/model","stream":true}' "$base/chat/completions")
[ "$(grep -c '^data: {' <<<"$out")" = 3 ] || fail "stream: $out"
grep -q '^data: \[DONE\]' <<<"$out" || fail "stream has no [DONE]: $out"
echo "smoke: ok   streamed request"

# 3. Rotation: key one is rate limited, the request still succeeds with key two.
curl -sS --max-time 5 -d "{\"key\":\"$key1\",\"replies\":[\"429:60\"]}" "http://127.0.0.1:$mock_port/_mock/plan" > /dev/null
curl -sS --max-time 5 -d "{\"key\":\"$key2\",\"replies\":[\"ok\"]}" "http://127.0.0.1:$mock_port/_mock/plan" > /dev/null
code=$(curl -sS -o "$work/body" -w '%{http_code}' --max-time 10 -d '{"model":"mock/model"}' "$base/api/v1/chat/completions")
[ "$code" = 200 ] || fail "rotation: HTTP $code $(cat "$work/body")"
grep -q "key 'one' (sk-or-v1-sm…0001) rests for" "$work/proxy.log" || fail "rotation: no cooldown logged"
echo "smoke: ok   rotation past a 429"

# 4. No whole key in anything the proxy printed.
if grep -q -e "$key1" -e "$key2" "$work/proxy.out" "$work/proxy.log"; then fail "a key leaked into the output"; fi
echo "smoke: ok   no key in the logs"

echo "smoke: 4 passed, 0 failed"
