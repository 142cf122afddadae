#!/usr/bin/env bash
# What reserving attempts in Redis (--redis, issue 17) costs the request path: one proxy
# with --redis and one without, the same 4 keys, every answer announcing a budget (so
# every attempt is reserved and released), wrk against each in turn, twice. Then the
# counts left in Redis just after the load and after one heartbeat (they err high, and
# only until the heartbeat's mend). Needs redis-server, wrk and python3; 127.0.0.1 only.
#
#   scripts/bench-reserve.sh            # builds the release binaries with --features redis
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --features redis --bins >/dev/null
BIN=target/release/roo-proxy
MOCK=target/release/mock-upstream
W=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
mkdir -p "$W/a" "$W/b"
for d in a b; do
  python3 -c 'import json,sys;json.dump([f"sk-or-v1-cost{i:08d}"+"0"*48 for i in range(4)],open(sys.argv[1],"w"))' "$W/$d/keys.json"
  chmod 600 "$W/$d/keys.json"
done
RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no >/dev/null & PIDS+=($!)
"$MOCK" --port 0 --quiet >"$W/mock.out" & PIDS+=($!)
for _ in $(seq 50); do grep -q listening "$W/mock.out" 2>/dev/null && break; sleep 0.1; done
MPORT=$(grep -o '[0-9]*$' "$W/mock.out")
P1=$(free_port); P2=$(free_port)
RUST_LOG=warn "$BIN" --port "$P1" --upstream "http://127.0.0.1:$MPORT/api/v1" --keys-file "$W/a/keys.json" --redis "redis://127.0.0.1:$RP" 2>"$W/a.log" & PIDS+=($!)
RUST_LOG=warn "$BIN" --port "$P2" --upstream "http://127.0.0.1:$MPORT/api/v1" --keys-file "$W/b/keys.json" 2>"$W/b.log" & PIDS+=($!)
for _ in $(seq 100); do
  curl -s "http://127.0.0.1:$P1/_roo/health" | grep -q '"redis":"up"' && curl -s "http://127.0.0.1:$P2/_roo/health" >/dev/null && break
  sleep 0.1
done
cat >"$W/post.lua" <<'L'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-mock-reply"] = "budget:100000:60"
wrk.body = '{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"Say hi."}]}'
L
for _ in 1 2; do
  for p in "$P2" "$P1"; do
    name=$([ "$p" = "$P1" ] && echo "with --redis" || echo "alone")
    wrk -t2 -c16 -d8s --latency -s "$W/post.lua" "http://127.0.0.1:$p/api/v1/chat/completions" |
      awk -v n="$name" '/Requests\/sec/{r=$2} /^ +50%/{p50=$2} /^ +99%/{p99=$2} /Non-2xx/{e=$NF} END{print n": req/s "r", p50 "p50", p99 "p99", non-2xx "e+0}'
  done
done
counts() { redis-cli -p "$RP" --scan --pattern 'roo-proxy:flight:*' | while read -r k; do redis-cli -p "$RP" HGETALL "$k" | tr '\n' ' '; echo; done; }
sleep 0.3; echo "counts in Redis 0.3 s after the load:"; counts
sleep 2.5; echo "and 2.8 s after:"; counts
