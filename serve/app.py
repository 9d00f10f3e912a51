"""Assemble the LitServe server: one endpoint per task bundle, plus /models, /stats and errors.

The bundles are checked here, in the parent process (hashes, task, vocabulary), so a bad bundle
stops the server before any worker starts; the model workers then load them with
``nmt.bundle.load_bundle``. LitServe provides ``GET /health`` (200 once every worker is ready),
``GET /info``, ``/docs`` and ``/openapi.json``; this module adds ``/models``, ``/stats`` and
``/metrics``, and the HTTP protections: optional API keys (``serve.auth``) and request limits
(``serve.http_limits``; the uvicorn side is set in ``serve.cli``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nmt.bundle import CONFIG, DECODING, VOCABULARY, read_decoding, read_manifest
from nmt.errors import UserError
from serve import schemas
from serve.auth import APIKeyAuth, api_keys
from serve.bundle_api import BundleAPI
from serve.char_lm import CharText, LMGenerateAPI, LMScalingsAPI, LMScoreAPI
from serve.classify import ClassifyAPI
from serve.decoding_limits import clamp_decoding
from serve.http_limits import RequestLimits
from serve.metrics import RequestMetrics, ServerMetrics
from serve.translation_api import AdmissionConfig, TranslateAPI
from serve.web import add_web_page

SERVER_PATHS = ("/", "/health", "/info", "/models", "/stats", "/metrics", "/docs", "/openapi.json")
MAX_REPORTED_ERRORS = 10  # a 784-pixel image of NaNs gets a short answer, not 784 lines


@dataclass
class ServeOptions:
    translate: str | None = None  # bundle directories, one per task
    classify: str | None = None
    lm: str | None = None
    max_batch_size: int = 32  # requests classified together (/classify)
    # /classify: seconds a batch waits to fill; a lone request pays it once.
    batch_timeout: float = 0.05
    # /translate: seconds new requests may wait to join a running search together (one encoder
    # pass for all of them); a request to an idle worker starts at once. Measured, 32 clients,
    # Multi30k model: 0.05 s -> 45.6 req/s, p99 1.30 s; 0.15 s -> 54.8, 1.11 s; 0.3 s -> 55.0.
    join_window: float = AdmissionConfig.join_window
    # /translate, per worker: live rows x source wordpieces decoding at once (memory grows with
    # it), waiting work before 503, and the decoding rate the up-front timeout check assumes
    max_live_cost: int = AdmissionConfig.max_live_cost
    max_queued_cost: int = AdmissionConfig.max_queued_cost
    decode_rate: float = AdmissionConfig.decode_rate
    language: str = AdmissionConfig.language  # documents' sentence splitter
    workers: int = 1  # model worker processes per endpoint
    # torch threads per worker: decoding small batches step by step gains little from more, and
    # spinning threads on a busy CPU cost far more (measured: 16 sentences 0.08 s on one thread,
    # 0.8-6 s on two with the other core busy); parallelism comes from batching and workers.
    threads: int = 1
    # seconds before a request is answered 504: /translate from arrival to answer, the others
    # while waiting for a worker
    timeout: float = 30.0
    quantize: str | None = None  # "int8": quantise float bundles' linear layers at load
    api_keys: tuple[str, ...] = ()  # clients must send one (besides $NMT_API_KEYS); none: open


def build_server(options: ServeOptions) -> ls.LitServer:
    if options.max_batch_size < 1 or options.workers < 1:
        raise UserError("--max-batch-size and --workers must be at least 1")
    if options.batch_timeout < 0 or options.join_window < 0 or options.timeout <= 0:
        raise UserError("--batch-timeout and --join-window must be >= 0, --timeout > 0")
    if options.threads < 1:
        raise UserError("--threads must be at least 1")
    if options.max_live_cost < 1 or options.max_queued_cost < 1 or options.decode_rate <= 0:
        raise UserError("--max-live-cost, --max-queued-cost and --decode-rate must be positive")
    common = {"threads": options.threads, "quantize": options.quantize}
    batched = {"max_batch_size": options.max_batch_size, **common}
    apis: list[BundleAPI] = []
    models: dict[str, Any] = {}

    def serve(task: str, directory: str, option: str, *endpoints: BundleAPI) -> None:
        models[task] = _describe(directory, task, option)
        models[task]["endpoints"] = {api.api_path: _batching(api) for api in endpoints}
        apis.extend(endpoints)

    if options.translate:
        serve(
            "translation",
            options.translate,
            "--translate",
            TranslateAPI(
                options.translate,
                admission=AdmissionConfig(
                    max_live_cost=options.max_live_cost,
                    max_queued_cost=options.max_queued_cost,
                    decode_rate=options.decode_rate,
                    join_window=options.join_window,
                    language=options.language,
                ),
                timeout=options.timeout,
                workers=options.workers,
                **common,
            ),
        )
    if options.classify:
        classify = ClassifyAPI(options.classify, batch_timeout=options.batch_timeout, **batched)
        serve("classify", options.classify, "--classify", classify)
    if options.lm:
        # one text at a time: a request with an unknown character is refused by its worker,
        # which in a batch would refuse its neighbours too
        lm_apis = [
            LMScoreAPI(options.lm, **common),
            LMGenerateAPI(options.lm, **common),
            LMScalingsAPI(options.lm, **common),
        ]
        serve("char_lm", options.lm, "--lm", *lm_apis)
        CharText(models["char_lm"]["vocabulary"], where=str(Path(options.lm) / VOCABULARY))
    if not apis:
        raise UserError("nothing to serve: give at least one of --translate, --classify, --lm")

    metrics = ServerMetrics([api.api_path for api in apis] + list(SERVER_PATHS))
    server = ls.LitServer(
        apis,
        accelerator="cpu",
        workers_per_device=options.workers,
        timeout=options.timeout,
        max_payload_size=schemas.MAX_BODY_BYTES,
        middlewares=_http_middlewares(options, metrics),
    )
    server.app.add_exception_handler(RequestValidationError, _validation_error)
    server.app.add_exception_handler(StarletteHTTPException, _http_error)
    overview = {
        "models": models,
        "limits": schemas.limits(),
        "workers": options.workers,
        "threads": options.threads,
        "quantize_at_load": options.quantize,
    }

    async def list_models() -> dict[str, Any]:
        """Each bundle's manifest and config, its endpoints' batching, and the request limits."""
        return overview

    async def batch_stats() -> dict[str, Any]:
        """Per endpoint: model calls by batch size (requests served together) since start."""
        return {api.api_path: api.stats.snapshot() for api in apis}

    server.app.add_api_route("/models", list_models, methods=["GET"])
    server.app.add_api_route("/stats", batch_stats, methods=["GET"])
    _add_metrics(server, apis, metrics)
    add_web_page(server.app)
    return server


def _http_middlewares(options: ServeOptions, metrics: ServerMetrics) -> list[tuple[type, dict]]:
    """Innermost first: API keys (if any), request limits, then metrics, which see every
    answer of those two. LitServe adds its body size limit outside them."""
    middlewares: list[tuple[type, dict]] = []
    keys = api_keys(options.api_keys)
    if keys:
        middlewares.append((APIKeyAuth, {"keys": keys}))
    middlewares.append((RequestLimits, {}))
    middlewares.append((RequestMetrics, {"metrics": metrics}))
    return middlewares


def _add_metrics(server: ls.LitServer, apis: list[BundleAPI], metrics: ServerMetrics) -> None:
    """``GET /metrics``: Prometheus text format (serve.metrics)."""
    metrics.watch(server, apis)
    server.app.add_api_route("/metrics", metrics.endpoint_handler, methods=["GET"])


def _batching(api: BundleAPI) -> dict[str, Any]:
    if isinstance(api, TranslateAPI):
        return {"batching": api.batching, **api.admission.__dict__}
    return {
        "batching": api.batching,
        "max_batch_size": api.max_batch_size,
        "batch_timeout": api.batch_timeout,
    }


def _describe(directory: str, task: str, option: str) -> dict[str, Any]:
    """What /models reports of a bundle, after checking it is a complete ``task`` bundle."""
    manifest = read_manifest(directory)
    if manifest["task"] != task:
        raise UserError(f"{option} {directory}: a {manifest['task']!r} bundle, not {task!r}")
    root = Path(directory)
    entry: dict[str, Any] = {
        "bundle": root.name,
        "manifest": manifest,
        "config": json.loads((root / CONFIG).read_text()),
    }
    if DECODING in manifest["files"]:
        entry["decoding"] = clamp_decoding(read_decoding(root / DECODING), str(root))
    if VOCABULARY in manifest["files"]:
        entry["vocabulary"] = json.loads((root / VOCABULARY).read_text())
    return entry


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 with one readable line (``field: problem``) and the first few errors in detail."""
    errors = error.errors()
    reported = [_readable(item) for item in errors[:MAX_REPORTED_ERRORS]]
    summary = "; ".join(f"{item['field']}: {item['message']}" for item in reported)
    if len(errors) > MAX_REPORTED_ERRORS:
        summary += f"; and {len(errors) - MAX_REPORTED_ERRORS} more"
    return JSONResponse(status_code=422, content={"detail": summary, "errors": reported})


def _readable(item: dict[str, Any]) -> dict[str, str]:
    location = item["loc"][1:]  # after "body"
    if item["type"] == "json_invalid":
        where = f" at character {location[0]}" if location else ""
        return {"field": "body", "message": f"not valid JSON ({item['ctx']['error']}{where})"}
    if not location and item["type"] == "model_attributes_type":
        return {
            "field": "body",
            "message": "must be a JSON object (Content-Type: application/json)",
        }
    message = item["msg"].removeprefix("Value error, ")
    return {"field": ".".join(str(part) for part in location) or "body", "message": message}


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """FastAPI's answer, with the reason when a body is not UTF-8 (FastAPI only says 400)."""
    detail = error.detail
    cause = error.__cause__
    if isinstance(cause, UnicodeDecodeError):
        detail = f"the request body is not valid UTF-8 ({cause.reason} at byte {cause.start})"
    return JSONResponse({"detail": detail}, status_code=error.status_code, headers=error.headers)
