"""A mixed load on ``POST /translate`` for a bounded time: do small requests keep their latency?

Phase 1 (the baseline, same process): ``--small-clients`` clients alone, each sending one
Multi30k test sentence at a time. Phase 2, as long: the same small clients, while other clients
send, all at once,
- large requests: 64 test sentences at beam 16 (within every limit; they queue by cost);
- requests at the limits: 64 texts of 1,000 characters at beam 16 (refused up front: 413);
- leaving clients: 8 texts of about 1,000 characters each, disconnecting after 0.2 s.
Printed: the small requests' p50 / p99 in both phases and their ratio, the answers of the
others by status, requests the workers took out (/stats ``removed``), and the workers' peak
memory against the documented bound. Target: small requests' p99 under 1 s.

    python benchmarks/serve_mixed.py --translate bundles/en-de --seconds 30
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import threading
import time
from pathlib import Path

import psutil
import requests
from serve_load import DEFAULT_SENTENCES, read_sentences, started_server

LEAVE_AFTER_SECONDS = 0.2
MAX_TEXTS = 64
MAX_CHARS = 1000


def percentile(values: list[float], fraction: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(fraction * (len(values) - 1)))]


class Load:
    """Client threads of one kind, each sending ``body()`` until ``stop`` is set."""

    def __init__(self, url: str, body, clients: int, timeout: float | None) -> None:
        self.url, self.body, self.timeout = url, body, timeout
        self.latencies: list[float] = []
        self.statuses: collections.Counter = collections.Counter()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]
        self.lock = threading.Lock()

    def _client(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                start = time.perf_counter()
                try:
                    answer = session.post(
                        f"{self.url}/translate", json=self.body(), timeout=self.timeout
                    )
                    status = answer.status_code
                except requests.exceptions.ReadTimeout:
                    status = "left"
                    session.close()
                with self.lock:
                    self.statuses[status] += 1
                    if status == 200:
                        self.latencies.append(time.perf_counter() - start)
                if status == 503:
                    time.sleep(float(answer.headers.get("Retry-After", 1)))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def worker_memory(server_pid: int | None) -> int:
    """Largest resident memory among the server's processes (the model workers)."""
    if server_pid is None:
        return 0
    family = psutil.Process(server_pid).children(recursive=True)
    return max((p.memory_info().rss for p in family if p.is_running()), default=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--translate", metavar="BUNDLE", required=True)
    parser.add_argument("--serve-args", default="", help="extra `nmt serve` options")
    parser.add_argument("--seconds", type=float, default=30.0, help="per phase (default 30)")
    parser.add_argument("--small-clients", type=int, default=4)
    parser.add_argument("--large-clients", type=int, default=2)
    parser.add_argument("--limit-clients", type=int, default=1)
    parser.add_argument("--leaving-clients", type=int, default=2)
    parser.add_argument("--sentences", type=Path, default=DEFAULT_SENTENCES)
    args = parser.parse_args(argv)
    sentences = read_sentences(args.sentences)
    long_texts = [" ".join(sentences[i : i + 12])[:MAX_CHARS] for i in range(0, 12 * MAX_TEXTS, 12)]
    counter = iter(range(1 << 62))

    def small() -> dict:
        return {"text": sentences[next(counter) % len(sentences)]}

    def large() -> dict:
        start = next(counter) % (len(sentences) - MAX_TEXTS)
        return {"text": sentences[start : start + MAX_TEXTS], "beam_size": 16}

    with started_server(args.translate, args.serve_args.split(), with_pid=True) as (url, pid):
        limits = requests.get(f"{url}/models", timeout=60).json()
        endpoint = limits["models"]["translation"]["endpoints"]["/translate"]
        memory_start = worker_memory(pid)
        with Load(url, small, args.small_clients, timeout=120) as alone:
            time.sleep(args.seconds)
        peak, highest_cost = memory_start, 0
        removed_before = requests.get(f"{url}/stats", timeout=60).json()["/translate"]["load"]
        with (
            Load(url, small, args.small_clients, timeout=120) as mixed,
            Load(url, large, args.large_clients, timeout=120) as big,
            Load(
                url, lambda: {"text": long_texts, "beam_size": 16}, args.limit_clients, 120
            ) as at_limits,
            Load(
                url, lambda: {"text": long_texts[:8]}, args.leaving_clients, LEAVE_AFTER_SECONDS
            ) as leaving,
        ):
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                peak = max(peak, worker_memory(pid))
                load = requests.get(f"{url}/stats", timeout=60).json()["/translate"]["load"]
                highest_cost = max(highest_cost, load["live_cost"])
                time.sleep(0.5)
        time.sleep(2)
        after = requests.get(f"{url}/stats", timeout=60).json()["/translate"]["load"]

    print(
        f"{args.seconds:g} s per phase; per worker: capacity {endpoint['max_live_cost']} live "
        f"cost units, queue bound {endpoint['max_queued_cost']}, "
        f"decode rate {endpoint['decode_rate']:g}/s"
    )
    p50a, p99a = statistics.median(alone.latencies), percentile(alone.latencies, 0.99)
    p50m, p99m = statistics.median(mixed.latencies), percentile(mixed.latencies, 0.99)
    print(
        f"small alone: {len(alone.latencies)} answered, p50 {p50a * 1000:.0f} ms, "
        f"p99 {p99a * 1000:.0f} ms"
    )
    print(
        f"small mixed: {len(mixed.latencies)} answered, p50 {p50m * 1000:.0f} ms, p99 "
        f"{p99m * 1000:.0f} ms ({p99m / p99a:.2f}x alone); statuses {dict(mixed.statuses)}"
    )
    print(f"large (64 sentences, beam 16): {dict(big.statuses)}")
    print(f"at the limits (64 x 1000 chars, beam 16): {dict(at_limits.statuses)}")
    print(
        f"leaving after {LEAVE_AFTER_SECONDS} s: {dict(leaving.statuses)}; taken out by the "
        f"workers: {after['removed'] - removed_before['removed']}"
    )
    print(
        f"worker memory: {memory_start / 2**20:.0f} MiB at start, peak {peak / 2**20:.0f} MiB; "
        f"highest live cost seen {highest_cost}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
