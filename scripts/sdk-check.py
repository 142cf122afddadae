#!/usr/bin/env python3
"""SDK check: each provider's official SDK raises its API error on the proxy's errors.

Usage: scripts/sdk-check.py [BIN_DIR]   (default target/release; needs the roo-proxy and
mock-upstream binaries there, and `pip install openai anthropic google-genai`; .ci/run
installs them into a venv). For each SDK (openai on OpenRouter, anthropic on Anthropic
and on OpenRouter's Messages API as Claude Code uses it, google-genai on Gemini's native
API) it checks, for plain and streamed calls, that the SDK raises its API error (never a
parse error, never a silently cut answer) carrying the proxy's message and status on:
  - the proxy's own JSON error: a 503 with no keys; a 429 with Retry-After after the
    stream's first event was a rate limit (mock `sse429`) and the only key rests;
  - the error event the proxy writes when the upstream breaks off mid-stream (mock
    `dropmid`, in that API's stream form), after the tokens before the break arrived.
Then the stream checks again on one proxy serving three pools, each SDK on its pool's
path (`/openrouter`, `/anthropic`, `/gemini`).
Nothing leaves 127.0.0.1. Exits non-zero on the first failure.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release")
EXE = ".exe" if os.name == "nt" else ""
OWN = "roo-proxy:"


def fail(what):
    sys.exit(f"sdk-check: FAIL: {what}")


def expect(condition, what):
    if not condition:
        fail(what)


def spawn(args, env=None):
    """Starts a binary that prints its address on its first line; returns (process, host:port)."""
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
    )
    line = proc.stdout.readline()
    match = re.search(r"http://(127\.0\.0\.1:\d+)", line)
    if not match:
        proc.kill()
        fail(f"{os.path.basename(args[0])}: no start line, got {line!r}")
    return proc, match.group(1)


def start_proxy(provider, folder, upstream=None, keys=(), more=()):
    """roo-proxy with `provider`, its own keys file holding `keys` (the file's JSON), and
    the flags `more`; returns (process, base URL)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROO_PROXY_")}
    env.pop("OPENROUTER_API_KEY", None)
    keys_file = os.path.join(folder, f"keys-{provider}-{len(keys)}-{len(more)}.json")
    with open(keys_file, "w") as f:
        json.dump(keys, f)
    env["ROO_PROXY_KEYS_FILE"] = keys_file
    args = [os.path.join(BIN, "roo-proxy" + EXE), "--port", "0", "--provider", provider]
    if upstream:
        args += ["--upstream", upstream]
    args += list(more)
    proc, addr = spawn(args, env)
    return proc, f"http://{addr}"


# Each SDK's calls. `call(base, reply, stream, text)` makes one call with the mock's
# `reply` (sent as the x-mock-reply header, which the proxy forwards), appending the text
# it reads to `text` as it arrives; it lets the SDK's exception through. `api_error(e)`
# returns (status, message, kind) when `e` is the SDK's API error, else None.


def openai_call(base, reply, stream, text):
    import openai

    client = openai.OpenAI(
        base_url=base + "/v1",
        api_key="dummy",
        max_retries=0,
        default_headers={"x-mock-reply": reply},
    )
    messages = [{"role": "user", "content": "hi"}]
    if not stream:
        answer = client.chat.completions.create(model="m", messages=messages)
        text.append(answer.choices[0].message.content)
        return
    for chunk in client.chat.completions.create(model="m", messages=messages, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)


def openai_error(e):
    import openai

    if isinstance(e, openai.APIStatusError):
        return e.status_code, str((e.body or {}).get("message", "")), type(e).__name__
    # An error event inside a 200 stream: APIError, with the event's error as its body.
    if isinstance(e, openai.APIError) and not isinstance(e, openai.APIConnectionError):
        body = e.body if isinstance(e.body, dict) else {}
        return body.get("code"), e.message, type(e).__name__
    return None


def anthropic_call(base, reply, stream, text):
    import anthropic

    client = anthropic.Anthropic(
        base_url=base, api_key="dummy", max_retries=0, default_headers={"x-mock-reply": reply}
    )
    request = dict(
        model="claude-sonnet-4", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )
    if not stream:
        answer = client.messages.create(**request)
        text.extend(block.text for block in answer.content if block.type == "text")
        return
    for event in client.messages.create(stream=True, **request):
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            text.append(event.delta.text)


def anthropic_error(e):
    import anthropic

    if not isinstance(e, anthropic.APIStatusError):
        return None
    body = e.body if isinstance(e.body, dict) else {}
    expect(body.get("type") == "error", f"anthropic: not Anthropic's error shape: {body}")
    error = body.get("error") or {}
    # An error event in a 200 stream keeps the stream's status; its type says what failed.
    status = e.status_code
    if status == 200 and error.get("type") == "api_error":
        status = 502
    return status, str(error.get("message", "")), f"{type(e).__name__} ({error.get('type')})"


def gemini_call(base, reply, stream, text):
    from google import genai
    from google.genai import types

    client = genai.Client(
        api_key="dummy",
        http_options=types.HttpOptions(base_url=base, headers={"x-mock-reply": reply}),
    )
    if not stream:
        answer = client.models.generate_content(model="gemini-2.5-flash", contents="hi")
        text.append(answer.text or "")
        return
    for chunk in client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"):
        text.append(chunk.text or "")


def gemini_error(e):
    from google.genai import errors

    if not isinstance(e, errors.APIError):
        return None
    return e.code, e.message or "", f"{type(e).__name__} ({e.status})"


def expect_api_error(name, call, api_error, status, tokens=""):
    """`call(text)` must raise the SDK's API error with `status` and the proxy's message,
    after handing out exactly `tokens` (the text before a break)."""
    text = []
    try:
        call(text)
    except Exception as e:  # noqa: BLE001 - which exception it is, is what we check
        parsed = api_error(e)
        expect(parsed is not None, f"{name}: not the SDK's API error: {type(e).__name__}: {e}")
        code, message, kind = parsed
        expect(code == status, f"{name}: status {code}, not {status} ({kind}: {message})")
        expect(OWN in message, f"{name}: not the proxy's message: {kind}: {message!r}")
        expect("".join(text) == tokens, f"{name}: read {''.join(text)!r}, not {tokens!r}")
        return kind
    fail(f"{name}: no error raised; the SDK took {''.join(text)!r} as a whole answer")


def check_stream_errors(name, base, call, api_error):
    """A broken stream, then a stream whose first event is a 429, through `base`."""
    # Mid-stream: the tokens before the break arrive, then the SDK raises.
    kind = expect_api_error(
        f"{name}: broken stream",
        lambda t: call(base, "dropmid", True, t),
        api_error,
        502,
        tokens="tok0 tok1 ",
    )
    print(f"sdk-check: {name}: a stream broken after two tokens: {kind} after them")
    # The first event is a rate limit: the key rests, and with no other key the proxy
    # answers its own 429 before any byte of the stream went out.
    kind = expect_api_error(
        f"{name}: streamed: own 429",
        lambda t: call(base, "sse429:600", True, t),
        api_error,
        429,
    )
    print(f"sdk-check: {name}: a stream whose first event is a 429, the proxy's own 429: {kind}")


def check(name, base, keyless, call, api_error):
    """Every check of one SDK, against a proxy with one key (`base`) and one with none."""
    # The stream the mock sends whole reads whole: the calls below are the SDK's own.
    text = []
    call(base, "ok", True, text)
    expect("".join(text) == "tok0 tok1 tok2 ", f"{name}: a whole stream read {text!r}")
    for stream in (False, True):
        how = "streamed" if stream else "plain"
        kind = expect_api_error(
            f"{name}: {how}: own 503 (no keys)",
            lambda t, s=stream: call(keyless, "ok", s, t),
            api_error,
            503,
        )
        print(f"sdk-check: {name}: {how} call, the proxy's own 503: {kind}")
    check_stream_errors(name, base, call, api_error)


def check_pools(folder, mock_addr):
    """One proxy with an OpenRouter, an Anthropic and a Gemini pool, each SDK on its pool's
    path (as the README's table says): each reads its own provider's shapes, and the
    rest of one pool's only key leaves the next pool serving."""
    mock = f"http://{mock_addr}"
    keys = {
        "keys": [
            {"key": "sdk-check-pool-openrouter"},
            {"key": "sdk-check-pool-anthropic", "provider": "anthropic"},
            {"key": "sdk-check-pool-gemini", "provider": "gemini"},
        ]
    }
    more = ["--pool-upstream", f"anthropic={mock}/api/v1", "--pool-upstream", f"gemini={mock}"]
    proc, base = start_proxy("openrouter", folder, f"{mock}/api/v1", keys, more)
    try:
        for name, pool, call, api_error in [
            ("openai on the openrouter pool", "/openrouter", openai_call, openai_error),
            ("anthropic on the anthropic pool", "/anthropic", anthropic_call, anthropic_error),
            ("google-genai on the gemini pool", "/gemini", gemini_call, gemini_error),
        ]:
            check_stream_errors(name, base + pool, call, api_error)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def main():
    sdks = [
        ("openai on openrouter", "openrouter", openai_call, openai_error),
        ("anthropic on anthropic", "anthropic", anthropic_call, anthropic_error),
        ("anthropic on openrouter (Claude Code)", "openrouter", anthropic_call, anthropic_error),
        ("google-genai on gemini", "gemini", gemini_call, gemini_error),
    ]
    procs = []
    try:
        mock, mock_addr = spawn([os.path.join(BIN, "mock-upstream" + EXE)])
        procs.append(mock)
        with tempfile.TemporaryDirectory() as folder:
            for n, (name, provider, call, api_error) in enumerate(sdks):
                upstream = f"http://{mock_addr}" + ("" if provider == "gemini" else "/api/v1")
                proxy, base = start_proxy(provider, folder, upstream, [f"sdk-check-key-{n}"])
                procs.append(proxy)
                empty, keyless = start_proxy(provider, folder, upstream, [])
                procs.append(empty)
                check(name, base, keyless, call, api_error)
                for proc in (proxy, empty):
                    proc.terminate()
                    proc.wait(timeout=20)
            check_pools(folder, mock_addr)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=20)
    print("sdk-check: ok")


if __name__ == "__main__":
    main()
