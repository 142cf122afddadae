#!/usr/bin/env bash
# Windows smoke test under Wine: roo-proxy.exe in front of mock-upstream.exe on 127.0.0.1,
# with curl from Linux: a plain and a streamed request, a rotation past a 429, the keys
# commands (a UTF-16 keys file with CRLF, a key piped with CRLF), the owner-only DACL of
# a new keys file and the warning for one others can read, ASCII output, a hot reload,
# keys encrypt/decrypt with Credential Manager, and a stop.
#
# Usage: scripts/smoke-windows.sh DIR   (DIR holds roo-proxy.exe and mock-upstream.exe)
# Needs wine64, x86_64-w64-mingw32-gcc and curl (.ci/run installs them). Headless: console
# programs need no display. Every Wine call has a timeout; the Wine prefix is a temporary
# folder removed at the end, after wineserver -k.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(cd "${1:?usage: $0 DIR-with-the-exe-files}" && pwd)
wine=$(command -v wine64 || command -v wine || echo /usr/lib/wine/wine64)
wineserver=$(command -v wineserver || echo /usr/lib/wine/wineserver)
[ -x "$wine" ] || { echo "smoke-windows: wine64 is not installed" >&2; exit 1; }

work=$(mktemp -d)
export WINEPREFIX="$work/prefix" WINEDEBUG=-all
# Our stand-in bcryptprimitives.dll (native) must win; no Mono or Gecko install prompts.
export WINEDLLOVERRIDES="bcryptprimitives=n;mscoree=;mshtml="
name=smoke-windows wait_tenths=600 curl_time=20 logs="proxy.log mock.out cmd.err"
# shellcheck source=scripts/smoke-lib.sh
. "$root/scripts/smoke-lib.sh"
cleanup() {
  stop_started
  timeout 20 "$wineserver" -k 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Runs a console program under Wine in the work folder, with a time limit.
w() { (cd "$work" && timeout 60 "$wine" "$@"); }

echo "smoke-windows: preparing the Wine prefix"
x86_64-w64-mingw32-gcc -shared -O2 -s -o "$work/bcryptprimitives.dll" \
  "$root/scripts/wine/bcryptprimitives.c" -ladvapi32
timeout 180 "$wine" wineboot -i > /dev/null 2>&1 || fail "wineboot did not finish"
cp "$work/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/"
w "$bin/roo-proxy.exe" --version > "$work/version" 2> "$work/cmd.err" || fail "roo-proxy.exe --version"
echo "smoke-windows: $(tr -d '\r' < "$work/version") runs under $("$wine" --version)"

key3="sk-or-v1-smoke000000000000000000000000000000000000000000000000000003"
key4="sk-or-v1-smoke000000000000000000000000000000000000000000000000000004"

# 1. keys add creates the keys file readable by this user alone (an owner-only DACL),
#    and keys list finds nothing to warn about. The key comes piped, ending in CRLF.
#    (--keys-file: no keys.json here yet, so the default would be the per-user file.)
printf '%s\r\n' "$key1" | w "$bin/roo-proxy.exe" keys add --label one --keys-file keys.json > "$work/cmd.out" 2> "$work/cmd.err" \
  || fail "keys add from a pipe: $(cat "$work/cmd.out")"
printf '%s\r\n' "$key2" | w "$bin/roo-proxy.exe" keys add - --label two > "$work/cmd.out" 2> "$work/cmd.err" \
  || fail "keys add - from a pipe"
w "$bin/roo-proxy.exe" keys list > "$work/list.out" 2> "$work/cmd.err" || fail "keys list"
grep -q "sk-or-v1-sm…0001" "$work/list.out" && grep -q "sk-or-v1-sm…0002" "$work/list.out" \
  || fail "keys list: $(cat "$work/list.out")"
grep -q "can be read by other users" "$work/cmd.err" && fail "a new keys file is readable by others"
grep -q "$key1" "$work/keys.json" || fail "the piped key was not stored whole (CRLF left in?)"
ok "keys add (piped with CRLF) creates a private keys file; keys list"

# 2. A keys file that others can read gets the warning. Wine gives a file without a
#    stored security descriptor a DACL from its Unix mode: 0644 lets Everyone read.
cp "$work/keys.json" "$work/open.json" && chmod 644 "$work/open.json"
w "$bin/roo-proxy.exe" keys list --keys-file open.json > /dev/null 2> "$work/cmd.err" || fail "keys list open.json"
grep -q "open.json' can be read by other users (Everyone); run: icacls" "$work/cmd.err" \
  || fail "no warning for a keys file others can read: $(cat "$work/cmd.err")"
ok "warning for a keys file others can read"

# 3. A UTF-16 keys file with CRLF line ends, as Windows PowerShell 5.1 writes one.
printf '[\r\n  "%s",\r\n  "%s"\r\n]\r\n' "$key3" "$key4" | iconv -f UTF-8 -t UTF-16 > "$work/utf16.json"
w "$bin/roo-proxy.exe" keys list --keys-file utf16.json > "$work/list.out" 2> "$work/cmd.err" \
  || fail "keys list of a UTF-16 file"
grep -q "sk-or-v1-sm…0003" "$work/list.out" && grep -q "sk-or-v1-sm…0004" "$work/list.out" \
  || fail "UTF-16 list: $(cat "$work/list.out")"
w "$bin/roo-proxy.exe" keys remove "$key3" --keys-file utf16.json > /dev/null 2> "$work/cmd.err" \
  || fail "keys remove in a UTF-16 file"
w "$bin/roo-proxy.exe" keys list --keys-file utf16.json > "$work/list.out" 2> "$work/cmd.err" || fail "keys list"
grep -q "sk-or-v1-sm…0003" "$work/list.out" && fail "keys remove left the key: $(cat "$work/list.out")"
grep -q "sk-or-v1-sm…0004" "$work/list.out" || fail "keys remove took the other key too"
ok "keys list and remove on a UTF-16 file with CRLF"

# 4. ROO_PROXY_ASCII=1: plain ASCII for Windows PowerShell 5.1 capturing the output.
ROO_PROXY_ASCII=1 w "$bin/roo-proxy.exe" keys list > "$work/list.out" 2> "$work/cmd.err" || fail "keys list"
grep -q "sk-or-v1-sm\.\.\.0001" "$work/list.out" || fail "ROO_PROXY_ASCII=1: $(cat "$work/list.out")"
LC_ALL=C grep -q '[^ -~\r]' "$work/list.out" && fail "ROO_PROXY_ASCII=1 printed non-ASCII: $(cat "$work/list.out")"
ok "ASCII output with ROO_PROXY_ASCII=1"

# 5. The proxy itself, in front of the mock.
(cd "$work" && exec timeout 600 "$wine" "$bin/mock-upstream.exe") > "$work/mock.out" 2>&1 &
pids+=($!)
mock_port=$(port_of "$work/mock.out")
(cd "$work" && exec timeout 600 "$wine" "$bin/roo-proxy.exe" --port 0 --shutdown-grace 2s \
  --upstream "http://127.0.0.1:$mock_port/api/v1") > "$work/proxy.out" 2> "$work/proxy.log" &
proxy=$!
pids+=($proxy)
port=$(port_of "$work/proxy.out")
base="http://127.0.0.1:$port"
echo "smoke-windows: $(tr -d '\r' < "$work/proxy.out" | head -n1)"

check_requests "$base" "$mock_port"

# 6. Hot reload: a key added by the keys command reaches the running proxy.
w "$bin/roo-proxy.exe" keys add "$key3" --label three > /dev/null 2> "$work/cmd.err" || fail "keys add while running"
wait_for "$work/proxy.log" "keys file changed: 1 added, 0 removed, 3 in the pool"
ok "hot reload of the keys file"

# 6b. keys encrypt: a generated secret in Credential Manager (Wine's); the running proxy
#     opens the encrypted file with it, and a key added to it reaches the pool.
w "$bin/roo-proxy.exe" keys encrypt > "$work/cmd.out" 2> "$work/cmd.err" || fail "keys encrypt: $(cat "$work/cmd.out")"
grep -q "stored in Windows Credential Manager" "$work/cmd.out" || fail "keys encrypt: $(cat "$work/cmd.out")"
grep -q -e "$key1" -e "$key3" "$work/keys.json" && fail "keys readable in the encrypted file"
wait_for "$work/proxy.log" "keys file changed: 0 added, 0 removed, 3 in the pool"
w "$bin/roo-proxy.exe" keys add "$key4" --label four > /dev/null 2> "$work/cmd.err" || fail "keys add to the encrypted file"
wait_for "$work/proxy.log" "keys file changed: 1 added, 0 removed, 4 in the pool"
w "$bin/roo-proxy.exe" keys decrypt > /dev/null 2> "$work/cmd.err" || fail "keys decrypt"
grep -q "$key4" "$work/keys.json" || fail "keys decrypt did not give back the added key"
ok "keys encrypt with Credential Manager, hot reload, keys decrypt"

# 7. A stop: Wine turns SIGINT into Ctrl-C; the proxy says so and exits.
kill -INT "$proxy"
for _ in $(seq 1 300); do kill -0 "$proxy" 2>/dev/null || break; sleep 0.1; done
kill -0 "$proxy" 2>/dev/null && fail "the proxy did not stop on Ctrl-C"
grep -q "stopped" "$work/proxy.log" || fail "no 'stopped' line after Ctrl-C"
ok "stop on Ctrl-C"

check_no_key_printed "$key1" "$key2" "$key3"

echo "smoke-windows: took $SECONDS s"
echo "smoke-windows: $passed passed, 0 failed"
