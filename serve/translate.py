"""``POST /translate`` with continuous batching: requests join a running beam search.

The model worker does not decode closed batches. Between two decoder steps it takes whatever
requests have arrived and adds their texts to the running search for their settings (beam
size, alpha, beta, n-best); a request is answered as soon as its last text is decided. So a
short sentence never waits for a long batch to finish, and the batch stays full under load.
A sentence's translation does not depend on when it joined or whom it met
(``nmt.decoding.beam_search``).

The request timeout counts from arrival to answer: a request still unanswered after it gets a
504, and what is left of its texts is decoded to the end and discarded.
"""

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from queue import Queue
from typing import TYPE_CHECKING

from fastapi import HTTPException
from litserve.loops.base import _SENTINEL_VALUE, LitLoop
from litserve.utils import LitAPIStatus, LoopResponseType, PickleableHTTPException

from serve.bundle_api import BundleAPI
from serve.schemas import Candidate, TranslateRequest, TranslateResponse, Translation

if TYPE_CHECKING:
    from nmt.bundle import Bundle
    from nmt.decoding import DecodingOptions, Hypothesis
    from nmt.decoding.beam_search import BeamSearch

logger = logging.getLogger(__name__)

IDLE_WAIT_SECONDS = 1.0  # an idle worker blocks this long on the queue before looking again

OptionsKey = tuple[int | None, float | None, float | None, int | None]


@dataclass
class PendingRequest:
    """A request being decoded: its texts' results so far."""

    nbest: bool  # whether the client asked for n-best lists
    results: list[list["Hypothesis"] | None]  # per text, None until it is decided
    arrived: float  # time.monotonic() when the request reached the server
    abandoned: bool = False  # answered already (timed out): decode to the end, answer nothing


class ContinuousTranslator:
    """Requests in, responses out, one decoder step at a time.

    One ``BeamSearch`` per combination of beam settings in flight; ``step`` advances each of
    them once. Sentence keys are (request key, text index).
    """

    def __init__(self, bundle: "Bundle") -> None:
        self.bundle = bundle
        self.searches: dict[OptionsKey, BeamSearch] = {}
        self.pending: dict[Hashable, PendingRequest] = {}

    def __len__(self) -> int:
        """Requests in flight (abandoned ones included until their texts are decided)."""
        return len(self.pending)

    def admit(self, requests: Sequence[tuple[Hashable, TranslateRequest, float]]) -> None:
        """Add (key, request, arrival time) requests to the searches for their settings; their
        texts take their first step at the next ``step``. Requests with the same settings are
        encoded together: one encoder call per settings, not per request."""
        from nmt.decoding.beam_search import BeamSearch
        from nmt.decoding.translate import model_device, pad_sources

        groups: dict[OptionsKey, list[tuple[Hashable, TranslateRequest, float]]] = {}
        for key, request, arrived in requests:
            if key in self.pending:
                raise ValueError(f"request {key!r} is already in flight")
            options_key = (request.beam_size, request.alpha, request.beta, request.nbest)
            groups.setdefault(options_key, []).append((key, request, arrived))
        for options_key, members in groups.items():
            search = self.searches.get(options_key)
            if search is None:
                device = model_device(self.bundle.model)
                search = BeamSearch(self.bundle.model, self._options(*options_key), device)
                self.searches[options_key] = search
            keys, sources = [], []
            for key, request, _ in members:
                keys += [(key, index) for index in range(len(request.texts))]
                sources += [self.bundle.wordpieces.encode(text) for text in request.texts]
            search.add(keys, *pad_sources(sources))
            for key, request, arrived in members:
                self.pending[key] = PendingRequest(
                    nbest=request.nbest is not None,
                    results=[None] * len(request.texts),
                    arrived=arrived,
                )

    def abandon(self, key: Hashable) -> None:
        """Answer nothing for this request (its client was already told it timed out)."""
        self.pending[key].abandoned = True

    def step(self) -> list[tuple[Hashable, TranslateResponse]]:
        """One decoder step of every search; the requests completed by it, with answers."""
        import torch

        answered = []
        with torch.inference_mode():
            for options_key, search in list(self.searches.items()):
                for (key, index), hypotheses in search.step():
                    request = self.pending[key]
                    request.results[index] = hypotheses
                    if all(result is not None for result in request.results):
                        del self.pending[key]
                        if not request.abandoned:
                            answered.append((key, self._response(request)))
                if not len(search):
                    del self.searches[options_key]
        return answered

    def clear(self) -> None:
        """Forget every request (after a failure that left the searches unusable)."""
        self.searches.clear()
        self.pending.clear()

    def _options(
        self, beam_size: int | None, alpha: float | None, beta: float | None, nbest: int | None
    ) -> "DecodingOptions":
        """The bundle's decoding options with the request's overrides; the beam holds nbest."""
        defaults = self.bundle.decoding
        nbest = nbest or 1
        beam_size = beam_size or max(defaults.beam_size, nbest)
        return replace(
            defaults,
            beam_size=beam_size,
            alpha=defaults.alpha if alpha is None else alpha,
            beta=defaults.beta if beta is None else beta,
            nbest=nbest,
            return_attention=False,
        )

    def _response(self, request: PendingRequest) -> TranslateResponse:
        decode = self.bundle.wordpieces.decode
        translations = []
        for hypotheses in request.results:
            candidates = [
                Candidate(text=decode(h.tokens), score=h.score, log_prob=h.log_prob)
                for h in hypotheses
            ]
            best = candidates[0]
            translations.append(
                Translation(
                    text=best.text,
                    score=best.score,
                    log_prob=best.log_prob,
                    nbest=candidates if request.nbest else None,
                )
            )
        return TranslateResponse(translations=translations)


class ContinuousBatchingLoop(LitLoop):
    """The model worker's loop for /translate: take arrivals, let them join, step, answer.

    Up to ``max_batch_size`` requests are in the worker at once; more wait in LitServe's queue.
    Arrivals join an idle search at once, and a running one when the oldest of them has waited
    ``batch_timeout`` seconds (``nmt serve --join-window``): encoding sentences one by one as
    they come would cost an encoder pass each, and the encoder's per-step work hardly grows
    with its batch.
    Errors are sent as LitServe's batched loop sends them, so the HTTP side answers alike.
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
        translator = ContinuousTranslator(lit_api.bundle)
        arrivals: list[tuple[Hashable, TranslateRequest, float]] = []  # not yet joined
        answer_to: dict[Hashable, int] = {}  # request uid -> its HTTP server's response queue
        timeout = lit_api.request_timeout
        timeout = None if timeout in (-1, False) else timeout

        def send(uid: Hashable, data, status: LitAPIStatus) -> None:
            self.put_response(
                transport, answer_to.pop(uid), uid, data, status, LoopResponseType.REGULAR
            )

        def fail(uid: Hashable, error: HTTPException) -> None:
            send(uid, PickleableHTTPException.from_exception(error), LitAPIStatus.ERROR)

        while True:
            while len(translator) + len(arrivals) < lit_api.max_batch_size:
                idle = not translator and not arrivals
                item = self.get_request(request_queue, block=idle, timeout=IDLE_WAIT_SECONDS)
                if item is None:
                    break
                if item == _SENTINEL_VALUE:
                    return
                response_queue_id, uid, arrived, request = item
                answer_to[uid] = response_queue_id
                if timeout is not None and self.clock() - arrived > timeout:
                    fail(uid, HTTPException(504, "Request timed out"))
                    continue
                arrivals.append((uid, lit_api.decode_request(request), arrived))
            if arrivals and (
                not translator or self.clock() - arrivals[0][2] >= lit_api.batch_timeout
            ):
                try:
                    translator.admit(arrivals)
                except Exception as error:
                    logger.exception("could not start decoding")
                    for uid, _, _ in arrivals:
                        if uid not in translator.pending:
                            fail(uid, HTTPException(500, f"could not start decoding: {error}"))
                arrivals = []
            if not translator:
                continue

            lit_api.stats.record(len(translator))
            try:
                answered = translator.step()
            except Exception as error:  # a model failure: every request in flight gets a 500
                logger.exception("decoding failed")
                for uid in list(translator.pending):
                    if uid in answer_to:
                        fail(uid, HTTPException(500, f"decoding failed: {error}"))
                translator.clear()
                continue
            for uid, response in answered:
                send(uid, lit_api.encode_response(response), LitAPIStatus.OK)
            if timeout is not None:
                now = self.clock()
                late = [
                    uid
                    for uid, request in translator.pending.items()
                    if uid in answer_to and now - request.arrived > timeout
                ]
                for uid in late:
                    translator.abandon(uid)
                    fail(uid, HTTPException(504, "Request timed out"))


class TranslateAPI(BundleAPI):
    """/translate: requests decoded together by ``ContinuousBatchingLoop``."""

    batching = "continuous"

    def __init__(self, bundle: str, **options) -> None:
        super().__init__(bundle, "/translate", loop=ContinuousBatchingLoop(), **options)

    def decode_request(self, request: TranslateRequest) -> TranslateRequest:
        return request

    def encode_response(self, output: TranslateResponse) -> TranslateResponse:
        return output
