# Shared by scripts/smoke.sh and scripts/smoke-windows.sh, which source it (it is not run
# on its own): the helpers, and the checks both make against a proxy in front of the
# mock upstream. Before sourcing it, a script sets
#   name          the prefix of its lines (smoke, smoke-windows)
#   work          its temporary folder, holding proxy.out and proxy.log
#   wait_tenths   how long port_of and wait_for wait, in tenths of a second
#   curl_time     curl's --max-time, in seconds
#   logs          (optional) the files of $work to show on a failure; default proxy.log

key1="sk-or-v1-smoke000000000000000000000000000000000000000000000000000001"
key2="sk-or-v1-smoke000000000000000000000000000000000000000000000000000002"
pids=()
passed=0

ok() {
  echo "$name: ok   $*"
  passed=$((passed + 1))
}

fail() {
  echo "$name: FAIL: $*" >&2
  local f
  for f in ${logs:-proxy.log}; do
    [ -f "$work/$f" ] && sed "s/^/  $f: /" "$work/$f" >&2
  done
  exit 1
}

# Stops the processes started (in $pids) and waits for them: the proxy saves its state
# file as it stops, so the folder must outlive it.
stop_started() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}

# Waits for a process's start line in FILE and prints its port.
port_of() {
  local file=$1
  for _ in $(seq 1 "$wait_tenths"); do
    if grep -q '127.0.0.1:' "$file" 2>/dev/null; then
      grep -o '127\.0\.0\.1:[0-9]*' "$file" | head -n1 | cut -d: -f2
      return 0
    fi
    sleep 0.1
  done
  fail "no start line in $file"
}

# Polls until FILE contains TEXT.
wait_for() {
  for _ in $(seq 1 "$wait_tenths"); do
    grep -qF -- "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "waited in vain for '$2' in $1"
}

# The proxy at BASE in front of the mock on MOCK_PORT, whose keys file holds $key1
# (label one) and $key2 (label two): a plain request, a streamed one, and a rotation
# past a 429 (after which key one rests).
check_requests() {
  local base=$1 mock_port=$2 out code
  # A plain chat completion, with a dummy client key as Roo Code sends one.
  out=$(curl -sS --max-time "$curl_time" -H 'Authorization: Bearer dummy' -H 'Content-Type: application/json' \
    -d '{"model":"mock/model","messages":[{"role":"user","content":"hi"}]}' "$base/v1/chat/completions")
  grep -q '"Hello from the mock"' <<<"$out" || fail "plain request: $out"
  ok "plain request"

  # A streamed one: every event and the end marker arrive.
  out=$(curl -sS -N --max-time "$curl_time" -H 'Content-Type: application/json' \
    -d '{"model":"mock/model","stream":true}' "$base/chat/completions")
  [ "$(grep -c '^data: {' <<<"$out")" = 3 ] || fail "stream: $out"
  grep -q '^data: \[DONE\]' <<<"$out" || fail "stream has no [DONE]: $out"
  ok "streamed request"

  # Rotation: key one is rate limited, the request still succeeds with key two.
  curl -sS --max-time "$curl_time" -d "{\"key\":\"$key1\",\"replies\":[\"429:60\"]}" "http://127.0.0.1:$mock_port/_mock/plan" > /dev/null
  curl -sS --max-time "$curl_time" -d "{\"key\":\"$key2\",\"replies\":[\"ok\"]}" "http://127.0.0.1:$mock_port/_mock/plan" > /dev/null
  code=$(curl -sS -o "$work/body" -w '%{http_code}' --max-time "$curl_time" -d '{"model":"mock/model"}' "$base/api/v1/chat/completions")
  [ "$code" = 200 ] || fail "rotation: HTTP $code $(cat "$work/body")"
  wait_for "$work/proxy.log" "key 'one' (sk-or-v1-sm…0001) rests for"
  ok "rotation past a 429"
}

# No whole key (the arguments) in anything the proxy printed.
check_no_key_printed() {
  local key
  for key in "$@"; do
    if grep -qF -- "$key" "$work/proxy.out" "$work/proxy.log"; then fail "a key leaked into the output"; fi
  done
  ok "no key in the logs"
}
