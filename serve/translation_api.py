"""``POST /translate``: HTTP in front, the text-level translator's open batch behind.

The HTTP side (``TranslateSpec``, in the HTTP process) validates a request, hands it to a model
worker and waits; it notices a client that disconnects and tells every worker to drop that
request (``Cancellations``, shared memory). The model worker (``TranslateLoop``) is a thin
adapter around ``nmt.decoding.translator.Translator``: it takes arrivals, checks each one's cost
up front, lets the translator step, and sends each finished request its answer. Every decision
about text, options, batching and formatting is the translator's, the same code `nmt translate`
runs, so the server and the CLI agree.

Admission, per worker:
- a request with a sentence that could never fit the worker's capacity (``max_live_cost``:
  live rows x source length), or that would need longer than the timeout alone at the worker's
  decoding rate, is refused at once with 413 saying why;
- one that does not fit now waits in the translator (in order within a request, the request
  holding least first between them); past ``max_queued_cost`` of
  waiting work it gets 503 with ``Retry-After`` (the seconds the waiting work needs);
- one that times out (from arrival to answer: 504) or whose client left is taken out of the
  batch before the next decoder step, so no work is spent on answers nobody reads.
A request that fails while being encoded, decoded or formatted gets a 500 naming the cause; the
others decode on untouched (the translator pins failures to their requests).
"""

import asyncio
import hashlib
import logging
import math
import multiprocessing as mp
import pickle
import time
import uuid
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from queue import Queue
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request, Response
from litserve.loops.base import LitLoop
from litserve.specs.base import LitSpec
from litserve.utils import (
    LitAPIStatus,
    LoopResponseType,
    PickleableHTTPException,
    ResponseBufferItem,
)

from serve.bundle_api import BundleAPI
from serve.schemas import Candidate, TranslateRequest, TranslateResponse, Translation
from serve.stats import BatchStats

if TYPE_CHECKING:
    from nmt.decoding.translator import Finished, Translator

logger = logging.getLogger(__name__)

IDLE_WAIT_SECONDS = 1.0  # an idle worker blocks this long on the queue before looking again
DISCONNECT_POLL_SECONDS = 0.1  # how often the HTTP side checks that the client is still there
CANCELLATION_SLOTS = 4096  # recent cancellations kept for the workers to read
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer
TIMEOUT_GRACE_SECONDS = 5.0  # the HTTP side answers 504 itself this long after the worker should
LOAD_FIELDS = (
    "requests",
    "live_rows",
    "live_sentences",
    "live_cost",
    "queued_sentences",
    "queued_cost",
    "steps",
    "row_steps",
    "removed",
)


@dataclass
class AdmissionConfig:
    """A worker's limits (``nmt serve`` options); defaults measured on this machine
    (``benchmarks/translator_capacity.py``, quickstart-size model, one thread)."""

    # about 10-12 KB of worker memory per unit (40,000 held 0.37 GiB above the model); a
    # decoder step's time grows with it, the rate per unit hardly does (10,000: 925/s; 40,000:
    # 876/s), so a small capacity keeps small requests fast at no cost in throughput
    max_live_cost: int = 10_000
    # waiting requests hold only wordpiece ids; this is about 7 minutes of work at the rate below
    max_queued_cost: int = 400_000
    # cost units (about row-steps) a worker decodes per second: 880-960 measured on a busy machine
    decode_rate: float = 1_000.0
    join_window: float = 0.2
    language: str = "en"


def _uid_number(uid: str) -> int:
    """A request id as the signed 64-bit number the shared ring stores."""
    return int.from_bytes(hashlib.blake2b(uid.encode(), digest_size=8).digest(), "big") >> 1


class Cancellations:
    """Requests whose clients left, told by the HTTP process to every model worker.

    A ring of recent request ids in shared memory (made before the workers start, so it reaches
    spawned workers and forked HTTP processes alike); each worker reads what is new since its
    last look. A worker that falls more than the ring behind misses the oldest ones, which then
    end at their timeout as before.
    """

    def __init__(self, slots: int = CANCELLATION_SLOTS) -> None:
        context = mp.get_context("spawn")
        self._ids = context.Array("q", slots)
        self._written = context.Value("q", 0, lock=False)

    def cancel(self, uid: str) -> None:
        with self._ids.get_lock():
            self._ids[self._written.value % len(self._ids)] = _uid_number(uid)
            self._written.value += 1

    def since(self, position: int) -> tuple[set[int], int]:
        """The ids cancelled after ``position`` (a count), and the new position."""
        with self._ids.get_lock():
            written = self._written.value
            first = max(position, written - len(self._ids))
            return {self._ids[i % len(self._ids)] for i in range(first, written)}, written


class TranslateStats(BatchStats):
    """The batch-size histogram, plus each worker's translator load (``Translator.stats``)."""

    def __init__(self, workers: int, max_batch_size: int) -> None:
        super().__init__(max_batch_size)
        self._max_batch_size = max_batch_size
        self._load = mp.get_context("spawn").Array("q", workers * len(LOAD_FIELDS))

    def record(self, batch_size: int) -> None:
        super().record(min(batch_size, self._max_batch_size))

    def publish(self, worker_id: int, load: dict[str, int]) -> None:
        start = worker_id * len(LOAD_FIELDS)
        with self._load.get_lock():
            for offset, name in enumerate(LOAD_FIELDS):
                self._load[start + offset] = load[name]

    def load(self) -> dict[str, int]:
        """Summed over the workers: live rows, queue, decoder steps and removals."""
        with self._load.get_lock():
            values = list(self._load)
        return {
            name: sum(values[offset :: len(LOAD_FIELDS)]) for offset, name in enumerate(LOAD_FIELDS)
        }

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "load": self.load()}


class TranslateSpec(LitSpec):
    """The HTTP side of /translate (LitServe's extension point for an endpoint of one's own)."""

    def __init__(self, cancellations: Cancellations, timeout: float | None) -> None:
        super().__init__()
        self.api_path = "/translate"
        self.cancellations = cancellations
        self.timeout = timeout
        self.add_endpoint(self.api_path, self.translate, ["POST"])

    async def translate(self, body: TranslateRequest, request: Request) -> TranslateResponse:
        """Translate texts (``text``: one or a list) or a whole ``document``.

        Answers 200 with one translation per text, or for a document its translation with the
        original whitespace kept and one translation per sentence; 413 when the request could
        never fit the worker or finish within the timeout; 422 for invalid input; 503 with
        ``Retry-After`` when the queue is full; 504 past the timeout; 500 naming the cause when
        this request failed in the worker.
        """
        uid = str(uuid.uuid4())
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), body))
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            while not event.is_set():
                try:
                    await asyncio.wait_for(event.wait(), DISCONNECT_POLL_SECONDS)
                except TimeoutError:
                    late = (
                        deadline is not None and time.monotonic() > deadline + TIMEOUT_GRACE_SECONDS
                    )
                    if late or await request.is_disconnected():
                        self.cancellations.cancel(uid)
                        if late:
                            raise HTTPException(504, "Request timed out") from None
                        return Response(status_code=CLIENT_CLOSED_REQUEST)
            response, status = self.response_buffer[uid].response
        finally:
            self.response_buffer.pop(uid, None)
        if status == LitAPIStatus.ERROR:
            raise _http_exception(response)
        return response


def _http_exception(response: Any) -> HTTPException:
    """The worker's error as an HTTPException; a 503's detail carries its Retry-After."""
    if isinstance(response, bytes):
        response = pickle.loads(response)
    if not isinstance(response, HTTPException):
        logger.error("translation failed: %r", response)
        return HTTPException(500, "Internal server error")
    detail, headers = response.detail, None
    if isinstance(detail, dict):
        headers = {"Retry-After": str(detail["retry_after"])}
        detail = detail["detail"]
    return HTTPException(response.status_code, detail, headers)


def _error(status: int, detail: str, retry_after: int | None = None) -> PickleableHTTPException:
    if retry_after is not None:
        return PickleableHTTPException(status, {"detail": detail, "retry_after": retry_after})
    return PickleableHTTPException(status, detail)


def response_of(finished: "Finished", request: TranslateRequest) -> TranslateResponse:
    """The translator's result in the endpoint's schema."""
    translations = []
    for item in finished.translations:
        alignment = item.alignment
        translations.append(
            Translation(
                text=item.text,
                score=item.score,
                log_prob=item.log_prob,
                nbest=(
                    [Candidate(text=c.text, score=c.score, log_prob=c.log_prob) for c in item.nbest]
                    if request.nbest is not None
                    else None
                ),
                source_tokens=None if alignment is None else alignment.source_tokens,
                target_tokens=None if alignment is None else alignment.target_tokens,
                alignment=None if alignment is None else [list(p) for p in alignment.pairs],
            )
        )
    return TranslateResponse(translations=translations, document=finished.document)


@dataclass
class _InFlight:
    answer_to: int  # the response queue of the HTTP process that waits
    request: TranslateRequest
    arrived: float


class TranslateWorker:
    """One model worker's requests: admission up front, the translator's steps, answers."""

    def __init__(
        self,
        translator: "Translator",
        admission: AdmissionConfig,
        timeout: float | None,
        send: Callable[[int, Hashable, Any, LitAPIStatus], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.translator, self.admission, self.timeout = translator, admission, timeout
        self.send, self.clock = send, clock
        self.in_flight: dict[Hashable, _InFlight] = {}

    def __len__(self) -> int:
        return len(self.in_flight)

    def arrive(
        self, answer_to: int, uid: Hashable, arrived: float, request: TranslateRequest
    ) -> None:
        """Admit the request into the translator, or answer it at once with why not."""
        from nmt.errors import UserError

        if self.timeout is not None and self.clock() - arrived > self.timeout:
            self.send(answer_to, uid, _error(504, "Request timed out"), LitAPIStatus.ERROR)
            return
        translator = self.translator
        try:
            options = translator.options(
                beam_size=request.beam_size,
                alpha=request.alpha,
                beta=request.beta,
                nbest=request.nbest,
                alignment=request.alignment,
            )
            prepared = translator.prepare(
                texts=None if request.document is not None else request.texts,
                document=request.document,
            )
        except UserError as error:
            self.send(answer_to, uid, _error(422, str(error)), LitAPIStatus.ERROR)
            return
        except Exception as error:  # noqa: BLE001 - this request's own failure
            logger.exception("could not encode a request")
            detail = f"could not encode the source: {error}"
            self.send(answer_to, uid, _error(500, detail), LitAPIStatus.ERROR)
            return
        refusal = self._refusal(prepared.sources, options)
        if refusal is not None:
            self.send(answer_to, uid, refusal, LitAPIStatus.ERROR)
            return
        translator.add(uid, prepared, options)
        self.in_flight[uid] = _InFlight(answer_to, request, arrived)

    def _refusal(self, sources: list[list[int]], options) -> PickleableHTTPException | None:
        admission, cost = self.admission, self.translator.cost
        largest = max(cost([ids], options) for ids in sources)
        if largest > admission.max_live_cost:
            return _error(
                413,
                f"a sentence of this request needs {largest} cost units (beam size x source "
                f"wordpieces), more than the {admission.max_live_cost} a worker holds; "
                "use a smaller beam or shorter sentences",
            )
        total = cost(sources, options)
        seconds = total / admission.decode_rate
        if self.timeout is not None and seconds > self.timeout:
            return _error(
                413,
                f"this request needs about {seconds:.0f} s of decoding ({total} cost units at "
                f"{admission.decode_rate:.0f}/s), more than the {self.timeout:g} s timeout; "
                "send less text per request or a smaller beam",
            )
        queued = self.translator.queued_cost
        if queued and queued + total > admission.max_queued_cost:
            retry_after = max(1, math.ceil(queued / admission.decode_rate))
            return _error(503, "the translation queue is full; retry later", retry_after)
        return None

    def cancel(self, numbers: set[int]) -> None:
        """Take out the requests whose clients left (no answer: nobody is waiting)."""
        for uid in [uid for uid in self.in_flight if _uid_number(str(uid)) in numbers]:
            self.translator.remove(uid)
            del self.in_flight[uid]

    def step(self) -> None:
        """Drop late requests (504), let the translator step, answer what finished."""
        if self.timeout is not None:
            now = self.clock()
            late = [
                uid for uid, item in self.in_flight.items() if now - item.arrived > self.timeout
            ]
            for uid in late:
                self.translator.remove(uid)
                item = self.in_flight.pop(uid)
                self.send(item.answer_to, uid, _error(504, "Request timed out"), LitAPIStatus.ERROR)
        if not self.in_flight:
            return
        for finished in self.translator.step():
            item = self.in_flight.pop(finished.key, None)
            if item is None:
                continue
            if finished.error is not None:
                self.send(
                    item.answer_to, finished.key, _error(500, finished.error), LitAPIStatus.ERROR
                )
                continue
            try:
                response = response_of(finished, item.request)
            except Exception as error:  # noqa: BLE001 - this request's own failure
                logger.exception("could not build a response")
                detail = f"could not format the translation: {error}"
                self.send(item.answer_to, finished.key, _error(500, detail), LitAPIStatus.ERROR)
                continue
            self.send(item.answer_to, finished.key, response, LitAPIStatus.OK)


class TranslateLoop(LitLoop):
    """The model worker's loop: take arrivals, let the worker step, answer; until told to stop.

    ``clock`` must be the clock LitServe stamps arrivals with (a test may pass its own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock

    def __call__(
        self,
        lit_api: "TranslateAPI",
        device: str,
        worker_id: int,
        request_queue: Queue,
        transport,
        workers_setup_status: dict,
        callback_runner,
        *args,
        **kwargs,
    ) -> None:
        timeout = lit_api.request_timeout
        timeout = None if timeout in (-1, False) else timeout

        def send(answer_to: int, uid: Hashable, data: Any, status: LitAPIStatus) -> None:
            self.put_response(transport, answer_to, uid, data, status, LoopResponseType.REGULAR)

        worker = TranslateWorker(lit_api.translator, lit_api.admission, timeout, send, self.clock)
        position = 0
        while True:
            for item in self._arrivals(request_queue, block=not worker):
                if item is None:
                    return
                worker.arrive(*item)
            cancelled, position = lit_api.cancellations.since(position)
            worker.cancel(cancelled)
            if worker:
                lit_api.stats.record(len(worker))
                worker.step()
            lit_api.stats.publish(worker_id % lit_api.workers, lit_api.translator.stats())

    def _arrivals(self, request_queue: Queue, block: bool) -> Iterator[tuple | None]:
        """What has arrived (waiting for the first when idle); None is LitServe's stop."""
        item = self.get_request(request_queue, block=block, timeout=IDLE_WAIT_SECONDS)
        while item is not None:
            if item == (None, None, None, None):  # LitServe's stop sentinel
                yield None
                return
            yield item
            item = self.get_request(request_queue, block=False)


class TranslateAPI(BundleAPI):
    """/translate: the model worker's translator, its limits, and the HTTP side's spec."""

    batching = "continuous"

    def __init__(
        self,
        bundle: str,
        *,
        admission: AdmissionConfig | None = None,
        timeout: float | None = None,
        workers: int = 1,
        max_batch_size: int = 64,
        **options,
    ) -> None:
        self.cancellations = Cancellations()
        spec = TranslateSpec(self.cancellations, timeout)
        super().__init__(bundle, spec.api_path, loop=TranslateLoop(), **options)
        self.spec = spec
        self.admission = admission or AdmissionConfig()
        self.workers = workers
        self.stats = TranslateStats(workers, max_batch_size)

    def prepare(self) -> None:
        from nmt.decoding.translator import Translator, TranslatorConfig

        config = TranslatorConfig(
            max_live_cost=self.admission.max_live_cost,
            join_window=self.admission.join_window,
            language=self.admission.language,
        )
        self.translator = Translator(
            self.bundle.model, self.bundle.wordpieces, self.bundle.decoding, config
        )
