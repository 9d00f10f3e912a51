"""Why a model worker could not start, as one line for the person who started the server.

LitServe's worker logs the exception of a failed ``setup`` with its traceback and the main
process then only says "One or more workers failed to start". ``StartupErrors`` is shared memory
made in the parent (like ``serve.stats``) where a worker records its one-line reason before the
failure propagates; the command reads it back and reports it. The traceback of an expected
failure (``UserError``: a bad bundle) is left out of the worker's log; any other keeps it.
"""

from __future__ import annotations

import logging
import multiprocessing as mp

from nmt.errors import UserError

MAX_MESSAGE_BYTES = 2000
SETUP_LOGGER = "litserve.loops.loops"  # where LitServe logs a failed setup


class StartupErrors:
    """The first start-up failure of an endpoint's workers, readable from every process."""

    def __init__(self) -> None:
        self._message = mp.get_context("spawn").Array("c", MAX_MESSAGE_BYTES)

    def record(self, message: str) -> None:
        data = " ".join(message.split()).encode("utf-8")[: MAX_MESSAGE_BYTES - 1]
        with self._message.get_lock():
            if not self._message.value:
                self._message.value = data

    def first(self) -> str | None:
        with self._message.get_lock():
            return self._message.value.decode("utf-8", errors="replace") or None


class _WithoutUserErrorTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_expected_failures() -> None:
    """In a worker: log a ``UserError`` from setup without its traceback."""
    logger = logging.getLogger(SETUP_LOGGER)
    if not any(isinstance(f, _WithoutUserErrorTraceback) for f in logger.filters):
        logger.addFilter(_WithoutUserErrorTraceback())


def describe(error: BaseException) -> str:
    """One line: the message of a ``UserError``, else the exception's type and message."""
    if isinstance(error, UserError):
        return str(error)
    return f"{type(error).__name__}: {error}"
