"""``nmt serve`` / ``nmt-serve``: serve exported bundles over HTTP until SIGINT or SIGTERM.

Either signal to the server's main process stops the HTTP and model worker processes before it
exits (LitServe's graceful shutdown; SIGTERM is turned into the same path as Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import signal
from dataclasses import fields, replace

from nmt.bundle import QUANTIZATIONS
from nmt.errors import UserError
from serve.app import ServeOptions, build_server
from serve.auth import API_KEYS_ENV
from serve.http_limits import LIMITS, uvicorn_options

HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # the binds LitServe accepts
DEFAULTS = ServeOptions()
WORKER_JOIN_SECONDS = 5.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmt serve",
        description="Serve exported bundles: POST /translate, /classify, /lm/score, "
        "/lm/generate, /lm/scalings; GET / (the web page), /health, /models, /stats, /metrics, "
        "/docs.",
    )
    parser.add_argument("--translate", metavar="BUNDLE", help="translation bundle directory")
    parser.add_argument("--classify", metavar="BUNDLE", help="MNIST ConvNet bundle directory")
    parser.add_argument("--lm", metavar="BUNDLE", help="character language model bundle directory")
    parser.add_argument("--host", default="127.0.0.1", choices=HOSTS)
    parser.add_argument("--port", type=int, default=8000, help="1024-65535 (default 8000)")
    parser.add_argument(
        "--workers", type=int, default=DEFAULTS.workers, help="model worker processes per endpoint"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULTS.threads,
        help=f"torch threads per model worker (default {DEFAULTS.threads})",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULTS.max_batch_size,
        help=f"/classify: requests classified together (default {DEFAULTS.max_batch_size})",
    )
    parser.add_argument(
        "--batch-timeout",
        type=float,
        default=DEFAULTS.batch_timeout,
        help=f"/classify: seconds a batch waits to fill (default {DEFAULTS.batch_timeout})",
    )
    parser.add_argument(
        "--join-window",
        type=float,
        default=DEFAULTS.join_window,
        help="/translate: seconds new requests may wait to join the running beam search "
        f"together (default {DEFAULTS.join_window})",
    )
    parser.add_argument(
        "--max-live-cost",
        type=int,
        default=DEFAULTS.max_live_cost,
        help="/translate: per worker, live rows x source wordpieces decoding at once; worker "
        f"memory grows with it (default {DEFAULTS.max_live_cost})",
    )
    parser.add_argument(
        "--max-queued-cost",
        type=int,
        default=DEFAULTS.max_queued_cost,
        help="/translate: per worker, waiting work past which requests get 503 with "
        f"Retry-After (default {DEFAULTS.max_queued_cost})",
    )
    parser.add_argument(
        "--decode-rate",
        type=float,
        default=DEFAULTS.decode_rate,
        help="/translate: cost units a worker decodes per second, for refusing up front what "
        f"could not finish within --timeout (default {DEFAULTS.decode_rate:g})",
    )
    parser.add_argument(
        "--language",
        default=DEFAULTS.language,
        help=f"/translate: source language of documents' sentence splitter "
        f"(default {DEFAULTS.language})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULTS.timeout,
        help="seconds before a request is answered 504: /translate from arrival to answer, "
        f"the others while waiting for a worker (default {DEFAULTS.timeout})",
    )
    parser.add_argument(
        "--quantize", choices=QUANTIZATIONS, help="quantise float bundles' linear layers at load"
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=LIMITS.read_timeout,
        help="seconds a client has to send a whole request, headers and body "
        f"(default {LIMITS.read_timeout})",
    )
    parser.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        default=[],
        metavar="KEY",
        help=f"require this key (X-API-Key header) on every path but /health; repeat for "
        f"several; ${API_KEYS_ENV} (comma-separated) keeps keys out of the process list",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1024 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be between 1024 and 65535")
    if not args.read_timeout > 0:
        raise UserError(f"--read-timeout {args.read_timeout}: must be above 0")
    options = ServeOptions(**{f.name: getattr(args, f.name) for f in fields(ServeOptions)})
    server = build_server(options)
    previous = signal.signal(signal.SIGTERM, _interrupt_in(os.getpid()))
    # SIGINT stops the server even when it was started in the background of a script, which
    # starts it with SIGINT ignored (Python then installs no handler of its own).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.run(
            host=args.host,
            port=args.port,
            num_api_servers=1,
            log_level=args.log_level,
            generate_client_file=False,
            **uvicorn_options(replace(LIMITS, read_timeout=args.read_timeout)),
        )
    except RuntimeError as error:  # LitServe: a model worker failed to start
        raise UserError(f"the server could not start: {_startup_error(server, error)}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        _stop_workers(server)
    return 0


def _startup_error(server, error: RuntimeError) -> str:
    """The first reason a worker recorded, else LitServe's own message."""
    for api in server.litapi_connector:
        message = getattr(api, "startup_errors", None) and api.startup_errors.first()
        if message:
            return message
    return f"{error} (see the log above)"


def _interrupt_in(main_pid: int):
    """A SIGTERM handler: Ctrl-C's path in the main process, the default in forked children.

    LitServe forks its HTTP worker after this handler is installed; uvicorn there re-raises the
    SIGTERM it receives at shutdown, which must end that process quietly.
    """

    def handler(signum: int, frame) -> None:
        if os.getpid() == main_pid:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    return handler


def _stop_workers(server) -> None:
    """End any model worker still alive (a signal during start-up skips LitServe's shutdown)."""
    for process in getattr(server, "inference_workers", []):
        if process.is_alive():
            process.terminate()
            process.join(WORKER_JOIN_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
    manager = getattr(server.transport_config, "manager", None)
    if manager is not None:
        manager.shutdown()
