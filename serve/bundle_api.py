"""The part every endpoint shares: load a bundle in each model worker, record batch sizes.

LitServe runs ``setup`` once in each (spawned) model worker. Endpoints on LitServe's own loops
are ``BatchPredictAPI``s: ``predict`` gets one request, or a list of up to ``max_batch_size``
requests that arrived within ``batch_timeout`` of each other, and subclasses implement
``predict_batch`` for a list either way. /translate brings its own loop (serve/translation_api.py).

No ``from __future__ import annotations`` in the endpoint modules: LitServe reads the request and
response types from the annotations of ``decode_request`` and ``encode_response`` as objects.
"""

from abc import abstractmethod
from typing import Any

import litserve as ls
from litserve.loops.base import LitLoop

from serve.decoding_limits import clamp_decoding
from serve.startup import StartupErrors, describe, quiet_expected_failures
from serve.stats import BatchStats


class BundleAPI(ls.LitAPI):
    """One endpoint served from one bundle directory."""

    # How requests meet: LitServe's batches ("dynamic"), or serve/translation_api.py's steps.
    batching = "dynamic"

    def __init__(
        self,
        bundle: str,
        api_path: str,
        *,
        max_batch_size: int = 1,
        batch_timeout: float = 0.0,
        threads: int = 1,
        quantize: str | None = None,
        loop: LitLoop | str = "auto",
    ) -> None:
        super().__init__(
            max_batch_size=max_batch_size,
            batch_timeout=batch_timeout,
            api_path=api_path,
            loop=loop,
        )
        self.bundle_dir = bundle
        self.threads = threads
        self.quantize = quantize
        self.stats = BatchStats(max_batch_size)
        self.startup_errors = StartupErrors()

    def setup(self, device: str) -> None:
        import torch

        from nmt.bundle import load_bundle

        quiet_expected_failures()
        torch.set_num_threads(self.threads)
        try:
            self.bundle = load_bundle(self.bundle_dir, quantize=self.quantize)
            _hold_decoding_to_limits(self.bundle)
            self.prepare()
        except Exception as error:
            self.startup_errors.record(f"{self.api_path} worker: {describe(error)}")
            raise

    def prepare(self) -> None:
        """Per-worker preparation after the bundle is loaded (vocabularies, defaults)."""


def _hold_decoding_to_limits(bundle: Any) -> None:
    """Clamp a bundle's default decoding options to the request limits (serve.decoding_limits)."""
    from dataclasses import asdict, replace

    if bundle.decoding is not None:
        values = clamp_decoding(asdict(bundle.decoding), where=str(bundle.directory))
        bundle.decoding = replace(bundle.decoding, **values)


class BatchPredictAPI(BundleAPI):
    """An endpoint whose model answers a list of requests in one call."""

    def predict(self, x: Any) -> Any:
        import torch

        requests = x if self.max_batch_size > 1 else [x]
        self.stats.record(len(requests))
        with torch.inference_mode():
            outputs = self.predict_batch(requests)
        return outputs if self.max_batch_size > 1 else outputs[0]

    @abstractmethod
    def predict_batch(self, requests: list[Any]) -> list[Any]:
        """One output per request, in order."""
