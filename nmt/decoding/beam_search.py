"""Batched beam search with GNMT scoring; greedy decoding is beam size 1.

Every live hypothesis of every sentence in the batch is one row of a flat (rows, ...) batch,
so one ``decode_step`` advances them all. The batch is open: sentences join a running search
between two steps (``BeamSearch.add``) and leave it as soon as they are decided, which is what
lets a server decode requests continuously instead of one closed batch after another.

Each sentence owns ``beam_size`` places: a hypothesis that emits EOS moves to that sentence's
finished list and gives its place up, so the set of live rows shrinks as hypotheses finish
(with beam size 1 this is exactly greedy decoding).
A sentence stops when its places are used up, or when no live hypothesis can reach a better
score than its ``nbest``-th finished one: log-probabilities only fall as a hypothesis grows,
lp grows at most to lp(max length) and cp is at most 0, so a live hypothesis with
log-probability L can score at most L / lp(max length).

Nothing a sentence does depends on the other sentences of its batch: its candidates are
ranked in its own block (``select_top_k``), its length limits and token count are its own, and
it stops on its own scores. So it gets the same output whenever it joins and whoever it meets.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nmt.decoding.model_interface import (
    Decodable,
    DecoderState,
    EncoderOutputLike,
    cat_sources,
    join_sources,
    narrow_sources,
    reorder_state,
)
from nmt.decoding.options import DecodingOptions, Hypothesis
from nmt.decoding.penalties import coverage_penalty, gnmt_score, length_penalty
from nmt.decoding.selection import Selection, select_top_k
from nmt.special_tokens import BOS_ID, EOS_ID, PAD_ID

NEVER_GENERATED = (PAD_ID, BOS_ID)


def output_length_limits(src_lengths: Tensor, options: DecodingOptions) -> Tensor:
    """Most output tokens (EOS not counted) per sentence: relative to its source, capped."""
    relative = options.max_length_ratio * src_lengths.to(torch.float64) + options.max_length_offset
    limits = relative.floor().long().clamp(max=options.max_length)
    return limits.clamp(min=options.min_length)


def constrain_log_probs(
    log_probs: Tensor, num_tokens: Tensor, max_tokens: Tensor, min_length: int
) -> Tensor:
    """Forbid PAD/BOS, EOS before ``min_length`` tokens, and anything but EOS at the limit.

    log_probs: (R, V), changed in place, for hypotheses that already hold ``num_tokens`` (R,)
    tokens; max_tokens: (R,).
    """
    log_probs[:, list(NEVER_GENERATED)] = float("-inf")
    too_short = num_tokens < min_length
    if too_short.any():
        log_probs[too_short, EOS_ID] = float("-inf")
    at_limit = max_tokens <= num_tokens
    if at_limit.any():
        eos = log_probs[at_limit, EOS_ID]
        log_probs[at_limit] = float("-inf")
        log_probs[at_limit, EOS_ID] = eos
    return log_probs


@dataclass
class LiveRows:
    """The live hypotheses: one row each, sorted by sentence, best first within a sentence.

    Sentences that joined at different steps hold different numbers of tokens, so ``tokens``
    and ``attention`` are right-aligned: a row's last ``n`` columns are its ``n`` steps.
    """

    sentence: Tensor  # (R,) index of the row's sentence in the search
    slot: Tensor  # (R,) rank of the row within its sentence
    log_prob: Tensor  # (R,) float32 cumulative log P
    prev_token: Tensor  # (R,) the token the next step is fed: BOS, then the row's last token
    tokens: Tensor  # (R, W) output so far, without BOS, left-padded with PAD
    state: DecoderState
    coverage: Tensor | None  # (R, S) attention summed over steps, when beta > 0
    attention: Tensor | None  # (R, W, S) attention of every step, when asked for

    @classmethod
    def start(
        cls, sentence: Tensor, state: DecoderState, width: int, source_width: int, options
    ) -> LiveRows:
        """One empty hypothesis per sentence, padded to ``width`` token columns."""
        rows, device = sentence.numel(), sentence.device
        return cls(
            sentence=sentence,
            slot=torch.zeros_like(sentence),
            log_prob=torch.zeros(rows, device=device),
            prev_token=torch.full((rows,), BOS_ID, dtype=torch.long, device=device),
            tokens=torch.full((rows, width), PAD_ID, dtype=torch.long, device=device),
            state=state,
            coverage=torch.zeros(rows, source_width, device=device) if options.beta else None,
            attention=(
                torch.zeros(rows, width, source_width, device=device)
                if options.return_attention
                else None
            ),
        )

    def select(
        self, rows: Tensor, sentence: Tensor, new_tokens: Tensor, log_prob: Tensor, slot: Tensor
    ) -> LiveRows:
        """The hypotheses ``rows`` extended by ``new_tokens``; state not yet advanced."""
        return LiveRows(
            sentence=sentence,
            slot=slot,
            log_prob=log_prob,
            prev_token=new_tokens,
            tokens=torch.cat([self.tokens.index_select(0, rows), new_tokens[:, None]], dim=1),
            state=reorder_state(self.state, rows),
            coverage=None if self.coverage is None else self.coverage.index_select(0, rows),
            attention=None if self.attention is None else self.attention.index_select(0, rows),
        )

    def take(self, rows: Tensor, sentence: Tensor) -> LiveRows:
        """Only the hypotheses ``rows``, unchanged, renumbered to sentences ``sentence``."""

        def pick(tensor: Tensor | None) -> Tensor | None:
            return None if tensor is None else tensor.index_select(0, rows)

        return LiveRows(
            sentence=sentence,
            slot=self.slot.index_select(0, rows),
            log_prob=self.log_prob.index_select(0, rows),
            prev_token=self.prev_token.index_select(0, rows),
            tokens=self.tokens.index_select(0, rows),
            state=reorder_state(self.state, rows),
            coverage=pick(self.coverage),
            attention=pick(self.attention),
        )

    def cat(self, other: LiveRows) -> LiveRows:
        """These rows, then ``other``'s (same token width), on the wider of their sources."""

        def join(first: Tensor | None, second: Tensor | None, source_dim: int) -> Tensor | None:
            return None if first is None else cat_sources(first, second, source_dim)

        return LiveRows(
            sentence=torch.cat([self.sentence, other.sentence]),
            slot=torch.cat([self.slot, other.slot]),
            log_prob=torch.cat([self.log_prob, other.log_prob]),
            prev_token=torch.cat([self.prev_token, other.prev_token]),
            tokens=torch.cat([self.tokens, other.tokens]),
            state=tuple(torch.cat(pair) for pair in zip(self.state, other.state, strict=True)),
            coverage=join(self.coverage, other.coverage, source_dim=1),
            attention=join(self.attention, other.attention, source_dim=2),
        )

    def narrow(self, steps: int, source_width: int) -> LiveRows:
        """Only the last ``steps`` token columns and the first ``source_width`` source columns:
        what the rows left after some sentences were decided can still use."""
        width = self.tokens.shape[1]
        return LiveRows(
            sentence=self.sentence,
            slot=self.slot,
            log_prob=self.log_prob,
            prev_token=self.prev_token,
            tokens=self.tokens[:, width - steps :],
            state=self.state,
            coverage=None if self.coverage is None else self.coverage[:, :source_width],
            attention=(
                None
                if self.attention is None
                else self.attention[:, width - steps :, :source_width]
            ),
        )


class FinishedHypotheses:
    """Per sentence: finished hypotheses, best first, and the score a newcomer must beat."""

    def __init__(self, nbest: int, device: torch.device) -> None:
        self.nbest = nbest
        self.lists: list[list[Hypothesis]] = []
        self.counts = torch.zeros(0, dtype=torch.long, device=device)
        # score of the nbest-th best finished hypothesis; -inf until there are nbest of them
        self.thresholds = torch.zeros(0, device=device)

    def extend(self, count: int) -> None:
        """Room for ``count`` more sentences, with nothing finished yet."""
        self.lists.extend([] for _ in range(count))
        self.counts = torch.cat([self.counts, self.counts.new_zeros(count)])
        self.thresholds = torch.cat(
            [self.thresholds, self.thresholds.new_full((count,), float("-inf"))]
        )

    def keep(self, index: Tensor) -> None:
        self.lists = [self.lists[i] for i in index.tolist()]
        self.counts, self.thresholds = self.counts[index], self.thresholds[index]

    def add(self, sentence: int, hypothesis: Hypothesis) -> None:
        hypotheses = self.lists[sentence]
        hypotheses.append(hypothesis)
        hypotheses.sort(key=lambda h: -h.score)  # stable: earlier finishers win ties
        self.counts[sentence] += 1
        if len(hypotheses) >= self.nbest:
            self.thresholds[sentence] = hypotheses[self.nbest - 1].score

    def best(self, sentence: int) -> list[Hypothesis]:
        return self.lists[sentence][: self.nbest]


class BeamSearch:
    """A running batched beam search: sentences join with ``add`` and leave when decided.

    Each ``step`` advances every live hypothesis by one token and returns the sentences that
    were decided by it, under the keys they were added with. Per sentence the search keeps
    its key, source length, output length limit and token count, in the order sentences were
    added; decided sentences are dropped and the rest renumbered.
    """

    def __init__(
        self, model: Decodable, options: DecodingOptions, device: torch.device | None = None
    ) -> None:
        self.model, self.options = model, options
        self.device = torch.device("cpu") if device is None else device
        self._clear()

    def _clear(self) -> None:
        self.keys: list[Hashable] = []
        self.encoder_output: EncoderOutputLike | None = None
        self.live: LiveRows | None = None
        empty = torch.zeros(0, dtype=torch.long, device=self.device)
        self.src_lengths, self.max_tokens, self.num_tokens = empty, empty, empty
        self.bound_penalty = torch.zeros(0, device=self.device)  # largest lp a sentence can see
        self.finished = FinishedHypotheses(self.options.nbest, self.device)
        self._row_encoder_output: EncoderOutputLike | None = None
        self._row_sentences: Tensor | None = None

    def __len__(self) -> int:
        """Sentences in the search (added and not yet decided)."""
        return len(self.keys)

    @property
    def live_rows(self) -> int:
        """Hypotheses the next step advances (what the step's memory and time grow with)."""
        return 0 if self.live is None else int(self.live.sentence.numel())

    def remove(self, keys: Collection[Hashable]) -> None:
        """Take the sentences with these keys out at once (their rows leave before the next
        step); the others go on exactly as if those had never been there."""
        gone = set(keys)
        if self.live is None or not gone.intersection(self.keys):
            return
        keep = torch.tensor([key not in gone for key in self.keys], device=self.device)
        renumbered = keep.long().cumsum(0) - 1
        rows = keep[self.live.sentence].nonzero().flatten()
        self.live = self.live.take(rows, renumbered[self.live.sentence[rows]])
        self._keep(keep.nonzero().flatten())

    @torch.no_grad()
    def add(self, keys: Sequence[Hashable], src_ids: Tensor, src_lengths: Tensor) -> None:
        """Encode new sentences; they take their first step with the others at the next step.

        src_ids: (B, S) encoder input (wordpieces + EOS, padded with PAD); src_lengths: (B,).
        """
        if len(keys) != src_ids.shape[0]:
            raise ValueError(f"{len(keys)} keys for {src_ids.shape[0]} sentences")
        if not keys:
            return
        src_lengths = src_lengths.to(self.device)
        encoder_output = self.model.encode(src_ids.to(self.device), src_lengths)
        sentence = torch.arange(len(self), len(self) + len(keys), device=self.device)
        rows = LiveRows.start(
            sentence,
            self.model.initial_decoder_state(encoder_output),
            width=0 if self.live is None else self.live.tokens.shape[1],
            source_width=encoder_output.mask.shape[1],
            options=self.options,
        )
        if self.live is None:
            self.encoder_output, self.live = encoder_output, rows
        else:
            self.encoder_output = join_sources(self.encoder_output, encoder_output)
            self.live = self.live.cat(rows)
        max_tokens = output_length_limits(src_lengths, self.options)
        self.keys.extend(keys)
        self.src_lengths = torch.cat([self.src_lengths, src_lengths])
        self.max_tokens = torch.cat([self.max_tokens, max_tokens])
        self.num_tokens = torch.cat([self.num_tokens, torch.zeros_like(max_tokens)])
        self.bound_penalty = torch.cat(
            [self.bound_penalty, length_penalty(max_tokens + 1, self.options.alpha)]
        )
        self.finished.extend(len(keys))
        self._row_encoder_output = None

    @torch.no_grad()
    def step(self) -> list[tuple[Hashable, list[Hypothesis]]]:
        """Advance every live hypothesis by one token. Returns the sentences decided by this
        step: (key, its ``nbest`` hypotheses, best first). Call with the model in eval mode."""
        live, options = self.live, self.options
        if live is None:
            return []
        if self._row_encoder_output is None or not torch.equal(self._row_sentences, live.sentence):
            self._row_encoder_output = self.encoder_output.index_select(live.sentence)
            self._row_sentences = live.sentence
        log_probs, attention, live.state = self.model.decode_step(
            live.prev_token, live.state, self._row_encoder_output
        )
        log_probs = constrain_log_probs(
            log_probs.float(),
            self.num_tokens[live.sentence],
            self.max_tokens[live.sentence],
            options.min_length,
        )
        if live.coverage is not None:
            live.coverage = live.coverage + attention
        if live.attention is not None:
            live.attention = torch.cat([live.attention, attention[:, None, :]], dim=1)

        beam_size = options.beam_size
        budgets = beam_size - self.finished.counts
        chosen = select_top_k(
            log_probs, live.log_prob, live.sentence, live.slot, budgets, beam_size
        )
        ends = chosen.token == EOS_ID
        if ends.any():
            self._finish(chosen, ends)
        self.num_tokens += 1

        # a sentence goes on while its best live extension can still beat its finished ones
        go_on = ~ends
        best_live = torch.full((len(self),), float("-inf"), device=self.device)
        best_live.scatter_reduce_(0, chosen.group[go_on], chosen.log_prob[go_on], "amax")
        undecided = best_live / self.bound_penalty > self.finished.thresholds
        go_on &= undecided[chosen.group]

        group = chosen.group[go_on]
        counts = torch.bincount(group, minlength=len(self))
        slot = torch.arange(group.numel(), device=self.device) - (counts.cumsum(0) - counts)[group]
        renumbered = undecided.long().cumsum(0) - 1
        self.live = live.select(
            chosen.row[go_on], renumbered[group], chosen.token[go_on], chosen.log_prob[go_on], slot
        )
        if bool(undecided.all()):
            return []
        decided = (~undecided).nonzero().flatten().tolist()
        results = [(self.keys[g], self.finished.best(g)) for g in decided]
        self._keep(undecided.nonzero().flatten())
        return results

    def _keep(self, index: Tensor) -> None:
        """Only the sentences ``index`` (ascending) stay; widths shrink to what they use."""
        if index.numel() == 0:
            self._clear()
            return
        self.keys = [self.keys[i] for i in index.tolist()]
        self.src_lengths, self.max_tokens = self.src_lengths[index], self.max_tokens[index]
        self.num_tokens, self.bound_penalty = self.num_tokens[index], self.bound_penalty[index]
        self.finished.keep(index)
        source_width = int(self.src_lengths.max())
        self.encoder_output = narrow_sources(self.encoder_output.index_select(index), source_width)
        self.live = self.live.narrow(int(self.num_tokens.max()), source_width)
        self._row_encoder_output = None

    def _finish(self, chosen: Selection, ends: Tensor) -> None:
        """Score the hypotheses that just emitted EOS and file them under their sentences."""
        live, options = self.live, self.options
        rows = chosen.row[ends]
        sentences = chosen.group[ends]
        log_probs = chosen.log_prob[ends]
        num_tokens = self.num_tokens[sentences]
        if live.coverage is None:
            coverages = torch.zeros_like(log_probs)
        else:
            source_mask = self.encoder_output.mask[sentences]
            coverages = coverage_penalty(live.coverage[rows], source_mask, options.beta)
        scores = gnmt_score(log_probs, num_tokens + 1, coverages, options.alpha)  # tokens + EOS
        width = live.tokens.shape[1]
        tokens = live.tokens[rows].tolist()
        for i, (sentence, count, score, log_prob) in enumerate(
            zip(
                sentences.tolist(),
                num_tokens.tolist(),
                scores.tolist(),
                log_probs.tolist(),
                strict=True,
            )
        ):
            attention = None
            if live.attention is not None:
                steps = live.attention.shape[1]  # this step's attention included
                source_length = int(self.src_lengths[sentence])
                attention = live.attention[rows[i], steps - count - 1 :, :source_length].clone()
            hypothesis = Hypothesis(tokens[i][width - count :], score, log_prob, attention)
            self.finished.add(sentence, hypothesis)


@torch.no_grad()
def beam_search(
    model: Decodable, src_ids: Tensor, src_lengths: Tensor, options: DecodingOptions
) -> list[list[Hypothesis]]:
    """Decode a padded batch of sources; per sentence, its ``nbest`` hypotheses, best first.

    src_ids: (B, S) encoder input (wordpieces + EOS, padded with PAD); src_lengths: (B,).
    Call with the model in eval mode.
    """
    search = BeamSearch(model, options, src_ids.device)
    search.add(range(src_ids.shape[0]), src_ids, src_lengths)
    results: list[list[Hypothesis]] = [[] for _ in range(src_ids.shape[0])]
    while len(search):
        for index, hypotheses in search.step():
            results[index] = hypotheses
    return results
