"""Load on ``POST /translate``: requests/s and latency at 1, 8 and 32 concurrent clients.

Each request carries one Multi30k test sentence (test_2016_flickr, English). One client sends
its requests one at a time, so 1 client is the sequential baseline; N clients keep N requests
in flight, which the server decodes together (continuous batching: a request joins the running
beam search at its next step). Printed per level: requests/s, throughput relative to the
sequential baseline, p50 and p99 latency, and the mean number of requests each decoder step
advanced, from the server's ``GET /stats``. Target: at 32 clients at least 5x the sequential
throughput, with p99 under 1 s.

Against a running server:
    nmt serve --translate bundles/en-de --log-level warning &
    python benchmarks/serve_load.py --url http://127.0.0.1:8000

Or let the benchmark start (and stop) the server on a free port, here with one model worker per
core of a 2-core machine:
    python benchmarks/serve_load.py --translate bundles/en-de \
        --serve-args '--workers 2'
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SENTENCES = REPO.parent / "shared" / "data" / "multi30k" / "test_2016_flickr.en.gz"
STARTUP_SECONDS = 300
WARMUP_REQUESTS = 8


def read_sentences(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return [line.strip() for line in file if line.strip()]


def run_level(url: str, sentences: list[str], clients: int, total: int) -> dict:
    """``total`` requests from ``clients`` threads, each one request at a time."""
    latencies: list[float] = []
    lock = threading.Lock()
    jobs = iter(itertools.islice(itertools.cycle(sentences), total))
    before = requests.get(f"{url}/stats", timeout=60).json()["/translate"]

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    sentence = next(jobs, None)
                if sentence is None:
                    return
                start = time.perf_counter()
                answer = session.post(f"{url}/translate", json={"text": sentence}, timeout=120)
                answer.raise_for_status()
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    after = requests.get(f"{url}/stats", timeout=60).json()["/translate"]
    batches = after["batches"] - before["batches"]
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": wall,
        "rps": len(latencies) / wall,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "per_step": (after["requests"] - before["requests"]) / max(batches, 1),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def started_server(bundle: str, extra: list[str], with_pid: bool = False):
    """`nmt serve` on a free port of 127.0.0.1, stopped (SIGTERM to its PID) on exit; yields
    its URL (and its PID with ``with_pid``)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "nmt.cli", "serve", "--translate", bundle, "--port", str(port)]
    process = subprocess.Popen([*command, "--log-level", "warning", *extra])
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the server exited with {process.returncode}")
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the server was not healthy within {STARTUP_SECONDS} s")
            time.sleep(0.5)
        yield (url, process.pid) if with_pid else url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    target.add_argument("--translate", metavar="BUNDLE", help="start `nmt serve` on this bundle")
    parser.add_argument(
        "--serve-args", default="", help="extra `nmt serve` options, e.g. '--workers 2'"
    )
    parser.add_argument("--sentences", type=Path, default=DEFAULT_SENTENCES)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--requests", type=int, default=256, help="requests per level (default 256)"
    )
    args = parser.parse_args(argv)
    sentences = read_sentences(args.sentences)

    with (
        started_server(args.translate, args.serve_args.split())
        if args.translate
        else _running(args.url)
    ) as url:
        models = requests.get(f"{url}/models", timeout=60).json()
        manifest = models["models"]["translation"]["manifest"]
        batching = models["models"]["translation"]["endpoints"]["/translate"]
        print(
            f"bundle {models['models']['translation']['bundle']}: "
            f"{manifest['parameters']:,} parameters, stored {manifest['quantize'] or 'float'}, "
            f"served {models['quantize_at_load'] or manifest['quantize'] or 'float'}, "
            f"workers={models['workers']}, "
            f"{batching['batching']} batching of up to {batching['max_live_cost']} live cost "
            f"units per worker; {len(sentences)} sentences"
        )
        run_level(url, sentences, 1, WARMUP_REQUESTS)
        results = [run_level(url, sentences, n, args.requests) for n in args.clients]

    baseline = results[0]["rps"]
    print(
        f"{'clients':>7} {'requests':>8} {'req/s':>7} {'x seq':>6} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'per step':>8}"
    )
    for r in results:
        print(
            f"{r['clients']:>7} {r['requests']:>8} {r['rps']:>7.1f} {r['rps'] / baseline:>6.2f} "
            f"{r['p50'] * 1000:>7.0f} {r['p99'] * 1000:>7.0f} {r['per_step']:>8.1f}"
        )
    return 0


@contextmanager
def _running(url: str):
    yield url.rstrip("/")


if __name__ == "__main__":
    sys.exit(main())
