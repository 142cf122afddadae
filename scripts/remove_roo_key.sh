#!/bin/sh
# Removes API keys from roo-proxy's keys file (replaces the old remove_roo_key.ps1).
#
#   remove_roo_key.sh PREFIX [--all] [--keys-file FILE]
#
# PREFIX is the start of the key (8 characters or more) or its label. When several keys
# match, --all removes them all.
set -eu
here=$(cd "$(dirname "$0")" && pwd)

# roo-proxy beside this script, then on PATH, then in this repo's target/release.
find_roo_proxy() {
  for candidate in "$here/roo-proxy" "$here/roo-proxy.exe"; do
    if [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
  done
  if command -v roo-proxy >/dev/null 2>&1; then command -v roo-proxy; return 0; fi
  for candidate in "$here/../target/release/roo-proxy" "$here/../target/release/roo-proxy.exe"; do
    if [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
  done
  return 1
}

if ! proxy=$(find_roo_proxy); then
  echo "$(basename "$0"): cannot find roo-proxy (looked beside this script in $here, on PATH, and in $here/../target/release)." >&2
  echo "Build it with 'cargo build --release --locked', or put the roo-proxy binary beside this script." >&2
  exit 127
fi
exec "$proxy" keys remove "$@"
