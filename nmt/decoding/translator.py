"""Text in, translations out: the one text-level translator of the project.

``nmt translate``, ``nmt evaluate`` and the server's model worker all use ``Translator``. It
owns every step between text and answer: wordpieces, the source length check, one rule for
resolving options over the model's defaults, the open batch that requests join and leave
between decoder steps, and the formatting of hypotheses (n-best lists, alignments, documents).
Sockeye's ``Translator.translate(inputs) -> outputs`` is the model of the closed-batch entry
point (``translate``); ``add`` / ``step`` / ``remove`` are the open batch a server drives.

The open batch admits by cost. A sentence costs its beam's rows times its source length (the
encoder output every row attends over is what memory grows with), and the live sentences'
cost stays within ``max_live_cost``; sentences wait until they fit (in order within a request;
the request holding least goes first), and join once the oldest has waited ``join_window``
seconds or at once when nothing is decoding. Large requests decode in searches of their own
and leave room for small ones. Each ``step`` does one unit of work, an encoder pass for a
search's newly joined sentences or one decoder step. Small and large requests share the time
as two classes, the large class's seconds counting ``large_time_weight`` times over, and within
a class the search that has had the least time goes next: so small requests keep their pace
beside large ones however many large searches there are or how often they come and go, and a
large request's long encoder pass waits its turn. A sentence's
output does not depend on when it joined or whom it met (``nmt.decoding.beam_search``), so
the CLI's closed batches and a server's open batch give the same translations for the same
options.

Failures stay with their request: a text the model cannot take is refused by ``prepare``;
one whose formatting fails finishes with an error; a decoder step that fails fails only the
requests decoding in that step's search (that search is reset), and the translator goes on.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from nmt.decoding.batching import model_device, pad_sources
from nmt.decoding.beam_search import BeamSearch
from nmt.decoding.documents import Document, split_document
from nmt.decoding.model_interface import Decodable
from nmt.decoding.options import DecodingOptions, Hypothesis
from nmt.errors import UserError
from nmt.text_checks import is_blank

logger = logging.getLogger(__name__)

# Longest source (wordpieces + EOS) a sentence may have: the decoder's default output cap, so a
# source the decoder could not translate in full is never cut silently (documents split it).
MAX_SOURCE_TOKENS = 256
DEFAULT_LANGUAGE = "en"  # the sentence splitter's language for documents
ENCODER_BATCH = 64  # sentences per encoder call when many join at once


@dataclass
class TranslatorConfig:
    """How the open batch admits sentences (the CLI keeps the defaults: no limit, no wait)."""

    max_live_cost: int | None = None  # live rows x source length; None: no limit
    # a request costing more than this share of max_live_cost decodes in a search of its own,
    # and large requests together leave small_room of the capacity to the others
    large_share: float = 0.1
    small_room: float = 0.25
    # small and large requests share the time as two classes, the large class's seconds counting
    # this many times over: small (interactive) requests get 1 - 1 / (1 + weight) of the worker
    # while large (bulk) ones are decoding
    large_time_weight: float = 4.0
    join_window: float = 0.0  # seconds arrivals may wait to join a running search together
    max_source_tokens: int = MAX_SOURCE_TOKENS
    language: str = DEFAULT_LANGUAGE  # for splitting documents into sentences


@dataclass
class Candidate:
    text: str
    score: float  # GNMT score the beam ranked it by
    log_prob: float  # log P(translation | source)


@dataclass
class Alignment:
    """Source-to-target wordpiece alignment: for each target wordpiece, the source wordpiece
    with the most attention (EOS excluded on both sides), as fairseq and OpenNMT print it."""

    source_tokens: list[str]
    target_tokens: list[str]
    pairs: list[tuple[int, int]]  # (source index, target index), by target index


@dataclass
class SentenceTranslation:
    text: str
    score: float
    log_prob: float
    nbest: list[Candidate]  # the options' nbest candidates, best first (text is nbest[0]'s)
    alignment: Alignment | None = None  # when the options ask for attention


@dataclass
class Finished:
    """A request that left the open batch: its translations, or why it failed."""

    key: Hashable
    translations: list[SentenceTranslation] | None = None
    document: str | None = None  # the reassembled document, for a document request
    error: str | None = None


def hard_alignment(
    attention: Tensor, source_length: int, target_length: int
) -> list[tuple[int, int]]:
    """(source, target) pairs: each target token's most attended source token, EOS left out.

    attention: (target steps, source positions), EOS step and EOS position included.
    """
    if source_length == 0 or target_length == 0:
        return []
    best = attention[:target_length, :source_length].argmax(dim=1).tolist()
    return [(source, target) for target, source in enumerate(best)]


@dataclass
class Prepared:
    """A request's sentences as wordpiece ids, and its document's layout if it is one."""

    sources: list[list[int]]
    document: Document | None = None


@dataclass
class _Request:
    options: DecodingOptions
    sources: list[list[int]]
    results: list[list[Hypothesis] | None]
    document: Document | None
    queue: deque[_Queued]  # its sentences not yet joined, in order
    search_key: tuple  # its options, and whether it is large (large ones decode apart)


@dataclass
class _Queued:
    key: Hashable
    index: int  # sentence index within its request
    cost: int
    since: float


@dataclass
class _Search:
    """One beam search (requests with the same options; large ones apart), the sentences that
    joined it but are not encoded yet, and the time it has had."""

    beam: BeamSearch
    large: bool
    spent: float  # seconds of encoder and decoder work, to share its class's time
    pending: list[_Queued] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(len(self.beam) or self.pending)


@dataclass
class _Counters:
    steps: int = 0  # decoder steps taken (one per search per ``step``)
    row_steps: int = 0  # hypotheses advanced, summed over steps
    removed: int = 0  # requests taken out before they finished


class Translator:
    """Translate texts and documents with a model and its wordpieces."""

    def __init__(
        self,
        model: Decodable,
        wordpieces,
        defaults: DecodingOptions | None = None,
        config: TranslatorConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model, self.wordpieces = model, wordpieces
        self.defaults = defaults or DecodingOptions()
        self.config = config or TranslatorConfig()
        self.clock = clock
        self.device = model_device(model)
        self._requests: dict[Hashable, _Request] = {}
        self._searches: dict[tuple, _Search] = {}
        # per class (large or not), its weighted seconds of work; a class's record persists when
        # its searches come and go, so a stream of new large requests gets no fresh share
        self._class_spent = {False: 0.0, True: 0.0}
        self._live_cost: dict[Hashable, int] = {}  # per request, its sentences in a search
        self._counters = _Counters()

    # ------------------------------------------------------------------ options and sources

    def options(
        self,
        beam_size: int | None = None,
        alpha: float | None = None,
        beta: float | None = None,
        nbest: int | None = None,
        alignment: bool = False,
        **lengths: int | float | None,
    ) -> DecodingOptions:
        """The defaults with what was given; the beam holds at least the n-best asked for,
        and a smaller beam than the default n-best keeps as many as it can."""
        given = {"alpha": alpha, "beta": beta, **lengths}
        given = {name: value for name, value in given.items() if value is not None}
        if beam_size is None:
            beam_size = max(self.defaults.beam_size, nbest or 0)
        if nbest is None:
            nbest = min(self.defaults.nbest, beam_size)
        return replace(
            self.defaults, beam_size=beam_size, nbest=nbest, return_attention=alignment, **given
        )

    def encode(self, texts: Sequence[str], where: Callable[[int], str] = "text {}".format):
        """Wordpiece ids of each text; a text too long for the model is a ``UserError``."""
        sources = [self.wordpieces.encode(text) for text in texts]
        limit = self.config.max_source_tokens
        for index, ids in enumerate(sources):
            if len(ids) + 1 > limit:
                raise UserError(
                    f"{where(index)}: {len(ids) + 1} wordpieces with its end, more than the "
                    f"{limit} the model takes; send it as a document to have it split"
                )
        return sources

    def split(self, text: str) -> Document:
        """A document's sentences; one too long for the model is cut at spaces into pieces."""
        limit = self.config.max_source_tokens
        try:
            return split_document(
                text,
                self.config.language,
                fits=lambda sentence: len(self.wordpieces.encode(sentence)) + 1 <= limit,
            )
        except ValueError as error:
            raise UserError(f"document: {error}") from None

    @staticmethod
    def cost(sources: Sequence[Sequence[int]], options: DecodingOptions) -> int:
        """Live rows x source length (wordpieces + EOS) the sentences hold while decoding."""
        return sum(options.beam_size * (len(ids) + 1) for ids in sources)

    # ------------------------------------------------------------------ closed batches

    def translate(
        self,
        texts: Sequence[str],
        options: DecodingOptions,
        batch_size: int,
        progress: Callable[[int], object] | None = None,
    ) -> list[SentenceTranslation]:
        """Translate sentences in batches of similar length; results in input order.

        Blank texts (only whitespace, control or zero-width characters) get an empty
        translation without decoding. ``progress(n)`` is called as
        sentences are done.
        """
        wanted = [i for i, text in enumerate(texts) if not is_blank(text)]
        sources = self.encode([texts[i].strip() for i in wanted], lambda i: f"line {wanted[i] + 1}")
        order = sorted(range(len(wanted)), key=lambda i: len(sources[i]))
        found: dict[int, SentenceTranslation] = {}
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            key = ("batch", start)
            self._add(key, [sources[i] for i in batch], options, None)
            while key in self._requests:
                for finished in self.step():
                    if finished.error is not None:
                        raise RuntimeError(finished.error)
                    found.update(zip(batch, finished.translations, strict=True))
            if progress is not None:
                progress(len(batch))
        empty = SentenceTranslation("", 0.0, 0.0, [Candidate("", 0.0, 0.0)])
        results = [empty] * len(texts)
        for position, index in enumerate(wanted):
            results[index] = found[position]
        return results

    def translate_document(
        self, text: str, options: DecodingOptions
    ) -> tuple[str, list[SentenceTranslation]]:
        """A whole document at once: its translation (whitespace kept) and its sentences'."""
        key = ("document",)
        self.add(key, self.prepare(document=text), options)
        while True:
            for finished in self.step():
                if finished.error is not None:
                    raise RuntimeError(finished.error)
                return finished.document, finished.translations

    # ------------------------------------------------------------------ the open batch

    def prepare(self, texts: Sequence[str] | None = None, document: str | None = None) -> Prepared:
        """A request's sources (a document split into sentences first), ready for ``cost`` and
        ``add``. Raises ``UserError`` for a text the model cannot take."""
        if document is None:
            return Prepared(self.encode(texts or []))
        split = self.split(document)
        if not split.sentences:
            raise UserError("document: no text to translate (only whitespace)")
        return Prepared(self.encode(split.sentences, "document sentence {}".format), split)

    def add(self, key: Hashable, prepared: Prepared, options: DecodingOptions) -> int:
        """Queue a request's sentences (they join at a later ``step``); returns its cost."""
        return self._add(key, prepared.sources, options, prepared.document)

    def _add(
        self,
        key: Hashable,
        sources: list[list[int]],
        options: DecodingOptions,
        document: Document | None,
    ) -> int:
        if key in self._requests:
            raise ValueError(f"request {key!r} is already in the translator")
        if not sources:
            raise UserError("nothing to translate")
        now = self.clock()
        queue = deque(
            _Queued(key, index, self.cost([ids], options), now) for index, ids in enumerate(sources)
        )
        cost = self.cost(sources, options)
        limit = self.config.max_live_cost
        large = limit is not None and cost > self.config.large_share * limit
        search_key = (*options.to_dict().values(), large)
        self._requests[key] = _Request(
            options, sources, [None] * len(sources), document, queue, search_key
        )
        self._live_cost[key] = 0
        return self.cost(sources, options)

    def remove(self, key: Hashable) -> None:
        """Take a request out at once: its queued sentences and its rows in every search."""
        request = self._requests.pop(key, None)
        if request is None:
            return
        self._counters.removed += 1
        self._live_cost.pop(key, None)
        search = self._searches.get(request.search_key)
        if search is not None:
            search.beam.remove([(key, index) for index in range(len(request.sources))])
            search.pending = [item for item in search.pending if item.key != key]
            if not search:
                del self._searches[request.search_key]

    def __len__(self) -> int:
        """Requests in the translator (queued or decoding)."""
        return len(self._requests)

    def stats(self) -> dict[str, int]:
        """What the open batch holds now, and what it did since it was made."""
        return {
            "requests": len(self._requests),
            "live_rows": sum(search.beam.live_rows for search in self._searches.values()),
            "live_sentences": sum(
                len(search.beam) + len(search.pending) for search in self._searches.values()
            ),
            "live_cost": self.live_cost,
            "queued_sentences": sum(len(r.queue) for r in self._requests.values()),
            "queued_cost": self.queued_cost,
            "steps": self._counters.steps,
            "row_steps": self._counters.row_steps,
            "removed": self._counters.removed,
        }

    @property
    def live_cost(self) -> int:
        return sum(self._live_cost.values())

    @property
    def queued_cost(self) -> int:
        return sum(item.cost for r in self._requests.values() for item in r.queue)

    def step(self) -> list[Finished]:
        """Let waiting sentences join (cost and join window allowing), then do one unit of work
        for the search ``_next_search`` picks: encode the sentences that joined it, or advance
        its hypotheses by one token. Returns the requests finished or failed in this call.

        Searches share the time, not the steps: a search of a few small requests takes many
        quick steps while one of large requests takes one slow step, so small requests are not
        held to the pace of the largest batch."""
        self._join()
        if not self._searches:
            return []
        search_key = self._next_search()
        search = self._searches[search_key]
        start = self.clock()
        if search.pending:
            done = self._encode_pending(search)
        else:
            done = self._decode_step(search_key, search)
        seconds = self.clock() - start
        search.spent += seconds
        weight = self.config.large_time_weight if search.large else 1.0
        self._class_spent[search.large] += weight * seconds
        if not search and self._searches.get(search_key) is search:
            del self._searches[search_key]
        return done

    def _next_search(self) -> tuple:
        """The class that has had the least (weighted) time, then its least served search. A
        class with nothing to do is kept level with the busy one, so it returns with no credit
        saved up while it was idle."""
        busy = {search.large for search in self._searches.values()}
        floor = min(self._class_spent[large] for large in busy)
        for large in {False, True} - busy:
            self._class_spent[large] = max(self._class_spent[large], floor)
        large = min(busy, key=self._class_spent.__getitem__)
        members = [key for key, search in self._searches.items() if search.large == large]
        return min(members, key=lambda key: self._searches[key].spent)

    def _decode_step(self, search_key: tuple, search: _Search) -> list[Finished]:
        rows = search.beam.live_rows
        try:
            with torch.inference_mode():
                decided = search.beam.step()
        except Exception as error:  # noqa: BLE001 - pinned to this search's requests
            logger.exception("a decoder step failed")
            return self._fail_search(search_key, search, f"decoding failed: {error}")
        self._counters.steps += 1
        self._counters.row_steps += rows
        done = []
        for (key, index), hypotheses in decided:
            finished = self._decided(key, index, hypotheses)
            if finished is not None:
                done.append(finished)
        return done

    def _join(self) -> None:
        """Move queued sentences into their searches (to be encoded there) while they fit.

        A request's sentences join in order; between requests, the one holding the least live
        cost goes first (the earliest on a tie), so a small request never waits behind all of
        a large one's sentences. Large requests together leave ``small_room`` of the capacity
        free, so a small one finds room at once instead of waiting for a slow large batch.
        """
        waiting = [key for key, request in self._requests.items() if request.queue]
        if not waiting:
            return
        oldest = min(self._requests[key].queue[0].since for key in waiting)
        if self._searches and self.clock() - oldest < self.config.join_window:
            return
        limit = self.config.max_live_cost
        live = self.live_cost
        live_large = sum(
            cost for key, cost in self._live_cost.items() if self._requests[key].search_key[-1]
        )
        joined = False

        def fits(key: Hashable) -> bool:
            cost, large = self._requests[key].queue[0].cost, self._requests[key].search_key[-1]
            if limit is None or not (live or joined):
                return True
            room = limit * (1 - self.config.small_room) if large else limit
            return (live_large if large else live) + cost <= room and live + cost <= limit

        while candidates := [key for key in waiting if fits(key)]:
            key = min(candidates, key=self._live_cost.__getitem__)
            request = self._requests[key]
            item = request.queue.popleft()
            if not request.queue:
                waiting.remove(key)
            large = request.search_key[-1]
            live += item.cost
            live_large += item.cost if large else 0
            self._live_cost[key] += item.cost
            joined = True
            search = self._searches.get(request.search_key)
            if search is None:
                # a new search starts level with its class's least served one, not ahead of them
                spent = min(
                    (other.spent for other in self._searches.values() if other.large == large),
                    default=0.0,
                )
                beam = BeamSearch(self.model, request.options, self.device)
                search = self._searches[request.search_key] = _Search(beam, large, spent)
            search.pending.append(item)

    def _encode_pending(self, search: _Search) -> list[Finished]:
        """One encoder pass over up to ``ENCODER_BATCH`` of the search's joined sentences, the
        shortest first: the recurrence runs to the longest source of its batch, so a document's
        sentences are not all padded to its longest."""
        search.pending.sort(key=lambda item: len(self._requests[item.key].sources[item.index]))
        batch, search.pending = search.pending[:ENCODER_BATCH], search.pending[ENCODER_BATCH:]
        try:
            self._encode_into(search.beam, batch)
        except Exception:  # noqa: BLE001 - find the request it belongs to
            return self._encode_one_by_one(search.beam, batch)
        return []

    def _encode_into(self, beam: BeamSearch, items: list[_Queued]) -> None:
        keys = [(item.key, item.index) for item in items]
        sources = [self._requests[item.key].sources[item.index] for item in items]
        with torch.inference_mode():
            beam.add(keys, *pad_sources(sources))

    def _encode_one_by_one(self, beam: BeamSearch, items: list[_Queued]) -> list[Finished]:
        """After a joint encoder call failed: each request's sentences alone, to find which."""
        beam.remove([(item.key, item.index) for item in items])  # any that got in
        failed = []
        by_request: dict[Hashable, list[_Queued]] = {}
        for item in items:
            by_request.setdefault(item.key, []).append(item)
        for key, members in by_request.items():
            try:
                self._encode_into(beam, members)
            except Exception as error:  # noqa: BLE001 - this request's own failure
                logger.exception("could not encode request %r", key)
                self.remove(key)
                failed.append(Finished(key, error=f"could not encode the source: {error}"))
        return failed

    def _fail_search(self, search_key: tuple, search: _Search, message: str) -> list[Finished]:
        """Fail the requests decoding in the search; the sentences still waiting for their
        encoder pass (other requests') go on in a fresh search."""
        keys = {key for key, _ in search.beam.keys}
        failed = []
        for key in keys:
            request = self._requests.pop(key, None)
            self._live_cost.pop(key, None)
            if request is not None:
                failed.append(Finished(key, error=message))
        search.pending = [item for item in search.pending if item.key not in keys]
        search.beam = BeamSearch(self.model, search.beam.options, self.device)
        if not search:
            del self._searches[search_key]
        return failed

    def _decided(self, key: Hashable, index: int, hypotheses: list[Hypothesis]) -> Finished | None:
        request = self._requests.get(key)
        if request is None:
            return None
        request.results[index] = hypotheses
        self._live_cost[key] -= self.cost([request.sources[index]], request.options)
        if request.queue or any(result is None for result in request.results):
            return None
        del self._requests[key]
        del self._live_cost[key]
        try:
            translations = [
                self.format(hyps, ids, request.options)
                for hyps, ids in zip(request.results, request.sources, strict=True)
            ]
            document = None
            if request.document is not None:
                document = request.document.assemble([t.text for t in translations])
        except Exception as error:  # noqa: BLE001 - this request's own failure
            logger.exception("could not format request %r", key)
            return Finished(key, error=f"could not format the translation: {error}")
        return Finished(key, translations, document)

    # ------------------------------------------------------------------ formatting

    def format(
        self, hypotheses: list[Hypothesis], source: list[int], options: DecodingOptions
    ) -> SentenceTranslation:
        """Detokenised text and scores; the best one's alignment when attention was kept."""
        decode = self.wordpieces.decode
        candidates = [Candidate(decode(h.tokens), h.score, h.log_prob) for h in hypotheses]
        best = hypotheses[0]
        alignment = None
        if options.return_attention and best.attention is not None:
            alignment = Alignment(
                source_tokens=self.wordpieces.pieces(source),
                target_tokens=self.wordpieces.pieces(best.tokens),
                pairs=hard_alignment(best.attention, len(source), len(best.tokens)),
            )
        return SentenceTranslation(
            candidates[0].text, best.score, best.log_prob, candidates, alignment
        )


__all__ = [
    "Alignment",
    "Candidate",
    "Finished",
    "Prepared",
    "SentenceTranslation",
    "Translator",
    "TranslatorConfig",
    "hard_alignment",
]
