"""What the HTTP limits cost and stop: uvicorn's default parser (httptools, no limits) against
``serve.http_limits.LimitedH11Protocol``, each serving a trivial ASGI app in its own process.

Prints, for both: small POST requests per second over one keep-alive connection (the parser's
overhead), the answer to one request with a huge header (time, status, server memory growth),
and how many of many unfinished requests are still open after twice the read timeout.

    python benchmarks/http_limits.py --requests 2000 --header-mib 64 --slow-clients 1000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import time
from dataclasses import replace

import psutil
import requests
import uvicorn

from serve.http_limits import LIMITS, uvicorn_options

STARTUP_SECONDS = 30
LIMITED = "h11 + limits"
PARSERS = ("httptools", "h11", LIMITED)  # uvicorn's default, its pure-Python parser, ours


async def app(scope, receive, send) -> None:
    """Read the body, answer a small JSON (as a cheap endpoint would)."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"json")]}
    )
    await send({"type": "http.response.body", "body": b'{"ok": true}'})


def serve(port: int, parser: str, read_timeout: float) -> None:
    options = {"http": parser}
    if parser == LIMITED:
        options = uvicorn_options(replace(LIMITS, read_timeout=read_timeout))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="critical", **options)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(parser: str, read_timeout: float) -> tuple[mp.Process, int]:
    port = free_port()
    process = mp.get_context("spawn").Process(target=serve, args=(port, parser, read_timeout))
    process.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the test server did not start")


def requests_per_second(port: int, count: int) -> float:
    with requests.Session() as session:
        url = f"http://127.0.0.1:{port}/translate"
        session.post(url, json={"text": "warm-up"}, timeout=10)
        started = time.perf_counter()
        for _ in range(count):
            session.post(url, json={"text": "Two dogs play in the snow."}, timeout=10)
        return count / (time.perf_counter() - started)


def huge_header(port: int, server: psutil.Process, mib: int) -> tuple[float, str, float]:
    """Seconds to the answer, its status line, and the server's RSS growth in MB."""
    before = server.memory_info().rss
    peak = before
    filler = b"x" * (mib << 20)
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as connection:
        try:
            connection.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Filler: ")
            for offset in range(0, len(filler), 1 << 20):
                connection.sendall(filler[offset : offset + (1 << 20)])
                peak = max(peak, server.memory_info().rss)
            connection.sendall(b"\r\nContent-Length: 0\r\n\r\n")
        except OSError:  # the server closed the connection while we were still sending
            pass
        try:
            answer = connection.recv(200)
        except OSError:
            answer = b""
    elapsed = time.perf_counter() - started
    peak = max(peak, server.memory_info().rss)
    status = answer.split(b"\r\n", 1)[0].decode() or "(closed without an answer)"
    return elapsed, status, (peak - before) / 1e6


def still_open_after(port: int, clients: int, wait: float) -> int:
    """Open ``clients`` connections that send half a header; how many are open after ``wait``."""
    connections = []
    for _ in range(clients):
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
        connection.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
        connections.append(connection)
    time.sleep(wait)
    open_count = sum(is_open(connection) for connection in connections)
    for connection in connections:
        connection.close()
    return open_count


def is_open(connection: socket.socket) -> bool:
    """Whether the server still holds ``connection`` (read what it sent, without waiting)."""
    connection.setblocking(False)
    try:
        while connection.recv(1 << 16):
            pass
        return False  # closed by the server
    except BlockingIOError:  # nothing more to read, and not closed
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--header-mib", type=int, default=64)
    parser.add_argument("--slow-clients", type=int, default=1000)
    parser.add_argument("--read-timeout", type=float, default=2.0)
    args = parser.parse_args()
    results = {}
    for name in PARSERS:
        process, port = start(name, args.read_timeout)
        try:
            server = psutil.Process(process.pid)
            rate = requests_per_second(port, args.requests)
            header = huge_header(port, server, args.header_mib)
            held = still_open_after(port, args.slow_clients, 2 * args.read_timeout)
        finally:
            process.kill()
            process.join()
        results[name] = rate
        print(
            f"{name}: {rate:.0f} requests/s; {args.header_mib} MiB header: {header[1]} after "
            f"{header[0]:.2f} s, server +{header[2]:.0f} MB; {held} of {args.slow_clients} "
            f"unfinished requests still open after {2 * args.read_timeout:.0f} s"
        )
    base = results["httptools"]
    for name in PARSERS[1:]:
        print(
            f"{name} vs httptools: {results[name] / base:.2f}x the requests/s "
            f"({1e3 / results[name] - 1e3 / base:+.2f} ms per request)"
        )


if __name__ == "__main__":
    main()
