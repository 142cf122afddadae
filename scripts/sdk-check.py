#!/usr/bin/env python3
"""SDK check: the proxy's own errors parse with each provider's official SDK.

Usage: scripts/sdk-check.py [BIN_DIR]   (default target/release; needs the roo-proxy
binary there, and `pip install openai anthropic google-genai`; .ci/run installs them
into a venv). For each SDK it starts roo-proxy with that provider and no keys, so every
API call gets the proxy's own 503, and checks the SDK raises its API error carrying the
proxy's message and status. Nothing leaves 127.0.0.1. Exits non-zero on the first
failure.
"""

import os
import re
import subprocess
import sys
import tempfile
import time

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release")
EXE = ".exe" if os.name == "nt" else ""


def start(provider, folder):
    """roo-proxy with `provider` and no keys; returns (process, base URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROO_PROXY_")}
    env.pop("OPENROUTER_API_KEY", None)
    env["ROO_PROXY_KEYS_FILE"] = os.path.join(folder, "keys.json")
    proc = subprocess.Popen(
        [os.path.join(BIN, "roo-proxy" + EXE), "--port", "0", "--provider", provider],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    deadline = time.monotonic() + 20
    line = proc.stdout.readline()
    match = re.search(r"http://(127\.0\.0\.1:\d+)", line)
    if not match or time.monotonic() > deadline:
        proc.kill()
        sys.exit(f"sdk-check: FAIL: {provider}: no start line, got {line!r}")
    return proc, f"http://{match.group(1)}"


def expect(provider, condition, what):
    if not condition:
        sys.exit(f"sdk-check: FAIL: {provider}: {what}")


def check_openai(base):
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key="dummy", max_retries=0)
    try:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError as e:
        expect("openai", e.status_code == 503, f"status {e.status_code}")
        expect("openai", str(e.body.get("message", "")).startswith("roo-proxy:"), f"body {e.body}")
        return
    sys.exit("sdk-check: FAIL: openai: no error raised")


def check_anthropic(base):
    import anthropic

    client = anthropic.Anthropic(base_url=base, api_key="dummy", max_retries=0)
    try:
        client.messages.create(
            model="claude-sonnet-4", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    except anthropic.APIStatusError as e:
        expect("anthropic", e.status_code == 503, f"status {e.status_code}")
        body = e.body or {}
        expect("anthropic", body.get("type") == "error", f"body {body}")
        expect("anthropic", body["error"]["type"] == "overloaded_error", f"body {body}")
        expect("anthropic", body["error"]["message"].startswith("roo-proxy:"), f"body {body}")
        expect("anthropic", "roo-proxy:" in e.message, f"message {e.message}")
        return
    sys.exit("sdk-check: FAIL: anthropic: no error raised")


def check_gemini(base):
    from google import genai
    from google.genai import errors, types

    client = genai.Client(api_key="dummy", http_options=types.HttpOptions(base_url=base))
    try:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    except errors.APIError as e:
        expect("gemini", e.code == 503, f"code {e.code}")
        expect("gemini", e.status == "UNAVAILABLE", f"status {e.status}")
        expect("gemini", (e.message or "").startswith("roo-proxy:"), f"message {e.message}")
        return
    sys.exit("sdk-check: FAIL: gemini: no error raised")


def main():
    checks = [("openrouter", check_openai), ("anthropic", check_anthropic), ("gemini", check_gemini)]
    with tempfile.TemporaryDirectory() as folder:
        for provider, check in checks:
            proc, base = start(provider, folder)
            try:
                check(base)
            finally:
                proc.terminate()
                proc.wait(timeout=20)
            print(f"sdk-check: {provider}: the proxy's own error parses with its SDK")


if __name__ == "__main__":
    main()
