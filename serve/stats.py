"""How many requests each model call served: a histogram shared by every server process.

Model workers record into shared memory; the HTTP process reads the same memory for
``GET /stats``. Created in the parent before the workers start, so it reaches the (spawned)
model workers and the (forked) HTTP workers alike.
"""

from __future__ import annotations

import multiprocessing as mp


class BatchStats:
    """Counts of model calls by batch size (requests per call) for one endpoint."""

    def __init__(self, max_batch_size: int) -> None:
        # spawn context: model workers are spawned, and a lock made for fork cannot reach them.
        self._counts = mp.get_context("spawn").Array("q", max_batch_size + 1)

    def record(self, batch_size: int) -> None:
        with self._counts.get_lock():
            self._counts[batch_size] += 1

    def snapshot(self) -> dict[str, int | dict[str, int]]:
        with self._counts.get_lock():
            counts = list(self._counts)
        histogram = {str(size): n for size, n in enumerate(counts) if n}
        return {
            "batches": sum(counts),
            "requests": sum(size * n for size, n in enumerate(counts)),
            "largest_batch": max((size for size, n in enumerate(counts) if n), default=0),
            "histogram": histogram,
        }
