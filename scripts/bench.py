#!/usr/bin/env python3
"""Runs the measurements of scripts/bench.sh and writes BENCHMARKS.md.

Everything talks to 127.0.0.1 only. Each server runs as its own process; the proxy's CPU
time and memory come from /proc. Load comes from wrk (one request body of 936 bytes, as
a chat request), the streaming and start-up measurements from target/release/bench-client.
"""
import datetime, json, os, platform, re, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
SECONDS = int(os.environ.get("BENCH_SECONDS", "8"))
CONCURRENCY = [1, 16, 64, 256]
# Each point of the main table is measured this many times (direct, then proxy, in turn);
# the table shows the median of each column, and the spread of the proxy's CPU.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
TICK = os.sysconf("SC_CLK_TCK")
PATH = "/v1/chat/completions"


def chat_body():
    # A realistic chat request of exactly 936 bytes.
    base = {"model": "anthropic/claude-sonnet-4", "stream": False,
            "messages": [{"role": "system", "content": "You are a helpful coding assistant."},
                         {"role": "user", "content": ""}]}
    filler = 936 - len(json.dumps(base, separators=(",", ":")))
    base["messages"][1]["content"] = ("Refactor this function for clarity. " * 40)[:filler]
    body = json.dumps(base, separators=(",", ":"))
    assert len(body) == 936, len(body)
    return body


def start(args, cwd=None):
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=cwd, text=True)
    line = proc.stdout.readline()
    port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
    return proc, port


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def memory_kib(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def to_ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port, connections, lua, seconds=None):
    threads = min(2, connections)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds or SECONDS}s", "--latency", "-s", lua,
                          f"http://127.0.0.1:{port}{PATH}"], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m.groups())
    return {"rps": rps, "total": total, "p50": p50, "p99": p99, "errors": errors}


def wrk_cpu(pid, port, connections, lua):
    """A wrk run against the proxy `pid`, with its CPU time per request (cpu_us)."""
    before = cpu_seconds(pid)
    run = wrk(port, connections, lua)
    run["cpu_us"] = (cpu_seconds(pid) - before) / max(run["total"], 1) * 1e6
    return run


def median_run(runs):
    """The median of each measure over runs; errors are summed, and the CPU's range kept."""
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "errors"}
    out["errors"] = sum(r["errors"] for r in runs)
    if "cpu_us" in out:
        out["cpu_range"] = (min(r["cpu_us"] for r in runs), max(r["cpu_us"] for r in runs))
    return out


def client(*args, cwd=None):
    out = subprocess.run([os.path.join(BIN, "bench-client"), *map(str, args)], capture_output=True, text=True, cwd=cwd)
    if not out.stdout.strip():
        sys.exit(f"bench-client {' '.join(map(str, args))} failed: {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def keys_file(folder, n):
    path = os.path.join(folder, "keys.json")
    with open(path, "w") as f:
        json.dump({"keys": [{"key": f"sk-or-v1-bench{i:08d}" + "0" * 48} for i in range(n)]}, f)
    return path


def main():
    work = tempfile.mkdtemp(prefix="roo-bench-")
    lua = os.path.join(work, "post.lua")
    with open(lua, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                f'wrk.headers["Authorization"] = "Bearer dummy"\nwrk.body = {json.dumps(chat_body())}\n')
    mock, mock_port = start([os.path.join(BIN, "mock-upstream"), "--quiet"])
    upstream = f"http://127.0.0.1:{mock_port}/api/v1"
    proxy_args = [os.path.join(BIN, "roo-proxy"), "--port", "0", "--upstream", upstream]
    keys_file(work, 4)
    proxy, proxy_port = start(proxy_args, cwd=work)
    time.sleep(0.3)
    results = {"idle_rss_kib": memory_kib(proxy.pid, "VmRSS")}

    # One second of load first, so that no point pays for starting threads and connections.
    wrk(proxy_port, 64, lua, seconds=1)
    rows = []
    for c in CONCURRENCY:
        directs, vias = [], []
        for _ in range(ROUNDS):
            direct = wrk(mock_port, c, lua)
            via = wrk_cpu(proxy.pid, proxy_port, c, lua)
            directs.append(direct)
            vias.append(via)
            print(f"c={c:<4} direct {direct['rps']:>9.0f} req/s p50 {direct['p50']:.3f} ms | proxy {via['rps']:>9.0f} req/s "
                  f"p50 {via['p50']:.3f} ms p99 {via['p99']:.3f} ms errors {via['errors']} cpu {via['cpu_us']:.1f} us/req", flush=True)
        rows.append((c, median_run(directs), median_run(vias)))
    results["peak_rss_load_kib"] = memory_kib(proxy.pid, "VmHWM")

    sse = {}
    for streams, rounds in [(1, 50), (100, 5)]:
        sse[streams] = {"direct": client("sse", f"127.0.0.1:{mock_port}", PATH, streams, rounds),
                        "proxy": client("sse", f"127.0.0.1:{proxy_port}", PATH, streams, rounds)}
        print(f"sse x{streams}: {sse[streams]}", flush=True)

    hold = client("hold", f"127.0.0.1:{proxy_port}", PATH, 1000, max(5, SECONDS))
    results["hold_peak_rss_kib"] = memory_kib(proxy.pid, "VmHWM")
    print(f"hold 1000: {hold}, peak RSS {results['hold_peak_rss_kib']} KiB", flush=True)
    proxy.kill()

    startups = sorted(client("startup", PATH, "--", *proxy_args, cwd=work)["ready_ms"] for _ in range(5))
    print(f"startup: {startups}", flush=True)

    # 10,000 keys against 4, both fresh, warmed, then measured in turn (twice each) so
    # the two see the same machine.
    big = tempfile.mkdtemp(prefix="roo-bench-10k-")
    keys_file(big, 10_000)
    pools = {"4": start(proxy_args, cwd=work), "10000": start(proxy_args, cwd=big)}
    time.sleep(0.5)
    many = {name: [] for name in pools}
    for p, port in pools.values():
        wrk(port, 64, lua, seconds=1)
    for turn in range(2):
        for name in (("4", "10000") if turn == 0 else ("10000", "4")):
            p, port = pools[name]
            many[name].append(wrk_cpu(p.pid, port, 64, lua))
    for p, _ in pools.values():
        p.kill()
    mock.kill()
    print(f"4 vs 10,000 keys at c=64: {many}", flush=True)

    size = os.path.getsize(os.path.join(BIN, "roo-proxy"))
    write_report(rows, sse, hold, startups, many, size, results)
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(big, ignore_errors=True)
    return 0


def write_report(rows, sse, hold, startups, many, size, results):
    cpu = platform.processor() or platform.machine()
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except StopIteration:
        model = cpu
    lines = [
        "## Latest run",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; commit `{git_head()}`",
        f"- Machine: {os.cpu_count()} cores ({model}), {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB, "
        f"Linux {platform.release()}; mock, proxy and load generator share the cores",
        f"- Command: `scripts/bench.sh` (wrk, {SECONDS} s per run, 936-byte chat request, 4 keys; "
        f"each row of the first table is the median of {ROUNDS} runs, direct and proxy in turn)",
        "",
        "| connections | mock alone req/s | through roo-proxy req/s | ratio | p50 direct → proxy (ms) | p99 proxy (ms) | errors | proxy CPU µs/request (lowest–highest run) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, d, v in rows:
        lines.append(f"| {c} | {d['rps']:,.0f} | {v['rps']:,.0f} | {v['rps'] / d['rps']:.0%} | {d['p50']:.3f} → {v['p50']:.3f} "
                     f"| {v['p99']:.3f} | {v['errors']} | {v['cpu_us']:.1f} ({v['cpu_range'][0]:.1f}–{v['cpu_range'][1]:.1f}) |")
    lines += ["", "| streaming (SSE, 5 events 20 ms apart) | direct | through roo-proxy |", "|---|---|---|"]
    for streams in sse:
        d, p = sse[streams]["direct"], sse[streams]["proxy"]
        lines.append(f"| time to first event, {streams} stream(s), p50 / p99 (ms) | {d['ttfb_p50_ms']:.2f} / {d['ttfb_p99_ms']:.2f} "
                     f"| {p['ttfb_p50_ms']:.2f} / {p['ttfb_p99_ms']:.2f} |")
        lines.append(f"| gap between events, {streams} stream(s), mean / p99 (ms) | {d['gap_mean_ms']:.2f} / {d['gap_p99_ms']:.2f} "
                     f"| {p['gap_mean_ms']:.2f} / {p['gap_p99_ms']:.2f} |")
        lines.append(f"| errors, {streams} stream(s) | {d['errors']} | {p['errors']} |")
    lines += [
        "",
        "| other | value |",
        "|---|---|",
        f"| 1,000 streams held at once | {hold['errors']} errors, peak RSS {results['hold_peak_rss_kib'] / 1024:.1f} MiB |",
        f"| RSS idle / after the load runs | {results['idle_rss_kib'] / 1024:.1f} MiB / {results['peak_rss_load_kib'] / 1024:.1f} MiB |",
        f"| start to first served request (5 runs, median) | {startups[len(startups) // 2]:.1f} ms |",
        f"| stripped release binary | {size / 1e6:.2f} MB |",
        "| 10,000 keys vs 4, 64 connections, fresh proxies measured in turn | "
        + "; ".join(
            f"{ten['rps']:,.0f} vs {four['rps']:,.0f} req/s, {ten['cpu_us']:.1f} vs {four['cpu_us']:.1f} µs CPU/request"
            for ten, four in zip(many["10000"], many["4"])
        )
        + " |",
        "",
    ]
    report = "\n".join(lines)
    print("\n" + report)
    path = os.path.join(ROOT, "BENCHMARKS.md")
    text = open(path).read() if os.path.exists(path) else ""
    marker = "## Latest run"
    head = text.split(marker)[0] if marker in text else (text.rstrip() + "\n\n" if text else "# Benchmarks\n\n")
    tail = ""
    if marker in text and "\n## " in text.split(marker, 1)[1]:
        tail = "\n## " + text.split(marker, 1)[1].split("\n## ", 1)[1]
    with open(path, "w") as f:
        f.write(head + report + tail)


def git_head():
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        # BENCHMARKS.md itself changes with every run; only other changes make it "dirty".
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md"],
                               capture_output=True, text=True, cwd=ROOT).stdout.strip()
        return head + (" with uncommitted changes" if dirty else "")
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
