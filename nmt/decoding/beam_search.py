"""Batched beam search with GNMT scoring; greedy decoding is beam size 1.

Every live hypothesis of every sentence in the batch is one row of a flat (rows, ...) batch,
so one ``decode_step`` advances them all. Each sentence owns ``beam_size`` places: a hypothesis
that emits EOS moves to that sentence's finished list and gives its place up, so the set of
live rows shrinks as hypotheses finish (with beam size 1 this is exactly greedy decoding).
A sentence stops when its places are used up, or when no live hypothesis can reach a better
score than its ``nbest``-th finished one: log-probabilities only fall as a hypothesis grows,
lp grows at most to lp(max length) and cp is at most 0, so a live hypothesis with
log-probability L can score at most L / lp(max length).

Nothing a sentence does depends on the other sentences of its batch: its candidates are
ranked in its own block (``select_top_k``), its length limits come from its own source, and
it stops on its own scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nmt.decoding.model_interface import Decodable, DecoderState, reorder_state
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
    log_probs: Tensor, num_tokens: int, max_tokens: Tensor, min_length: int
) -> Tensor:
    """Forbid PAD/BOS, EOS before ``min_length`` tokens, and anything but EOS at the limit.

    log_probs: (R, V) for hypotheses that already hold ``num_tokens`` tokens, changed in place;
    max_tokens: (R,).
    """
    log_probs[:, list(NEVER_GENERATED)] = float("-inf")
    if num_tokens < min_length:
        log_probs[:, EOS_ID] = float("-inf")
    at_limit = max_tokens <= num_tokens
    if at_limit.any():
        eos = log_probs[at_limit, EOS_ID]
        log_probs[at_limit] = float("-inf")
        log_probs[at_limit, EOS_ID] = eos
    return log_probs


@dataclass
class LiveRows:
    """The live hypotheses: one row each, sorted by sentence, best first within a sentence."""

    sentence: Tensor  # (R,) index of the row's sentence in the batch
    slot: Tensor  # (R,) rank of the row within its sentence
    log_prob: Tensor  # (R,) float32 cumulative log P
    tokens: Tensor  # (R, t) output so far, without BOS
    state: DecoderState
    coverage: Tensor | None  # (R, S) attention summed over steps, when beta > 0
    attention: Tensor | None  # (R, t, S) attention of every step, when asked for

    def select(self, rows: Tensor, new_tokens: Tensor, log_prob: Tensor, slot: Tensor) -> LiveRows:
        """The hypotheses ``rows`` extended by ``new_tokens``; state not yet advanced."""
        return LiveRows(
            sentence=self.sentence.index_select(0, rows),
            slot=slot,
            log_prob=log_prob,
            tokens=torch.cat([self.tokens.index_select(0, rows), new_tokens[:, None]], dim=1),
            state=reorder_state(self.state, rows),
            coverage=None if self.coverage is None else self.coverage.index_select(0, rows),
            attention=None if self.attention is None else self.attention.index_select(0, rows),
        )


class FinishedHypotheses:
    """Per sentence: finished hypotheses, best first, and the score a newcomer must beat."""

    def __init__(self, batch_size: int, nbest: int, device: torch.device) -> None:
        self.nbest = nbest
        self.lists: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
        self.counts = torch.zeros(batch_size, dtype=torch.long, device=device)
        # score of the nbest-th best finished hypothesis; -inf until there are nbest of them
        self.thresholds = torch.full((batch_size,), float("-inf"), device=device)

    def add(self, sentence: int, hypothesis: Hypothesis) -> None:
        hypotheses = self.lists[sentence]
        hypotheses.append(hypothesis)
        hypotheses.sort(key=lambda h: -h.score)  # stable: earlier finishers win ties
        self.counts[sentence] += 1
        if len(hypotheses) >= self.nbest:
            self.thresholds[sentence] = hypotheses[self.nbest - 1].score

    def best(self) -> list[list[Hypothesis]]:
        return [hypotheses[: self.nbest] for hypotheses in self.lists]


@torch.no_grad()
def beam_search(
    model: Decodable, src_ids: Tensor, src_lengths: Tensor, options: DecodingOptions
) -> list[list[Hypothesis]]:
    """Decode a padded batch of sources; per sentence, its ``nbest`` hypotheses, best first.

    src_ids: (B, S) encoder input (wordpieces + EOS, padded with PAD); src_lengths: (B,).
    Call with the model in eval mode.
    """
    batch_size, device = src_ids.shape[0], src_ids.device
    src_lengths = src_lengths.to(device)
    encoder_output = model.encode(src_ids, src_lengths)
    source_mask = encoder_output.mask
    max_tokens = output_length_limits(src_lengths, options)
    bound_penalty = length_penalty(max_tokens + 1, options.alpha)  # largest lp a sentence can see
    beam_size = options.beam_size

    first = torch.arange(batch_size, device=device)
    source_width = source_mask.shape[1]
    live = LiveRows(
        sentence=first,
        slot=torch.zeros_like(first),
        log_prob=torch.zeros(batch_size, device=device),
        tokens=torch.zeros(batch_size, 0, dtype=torch.long, device=device),
        state=model.initial_decoder_state(encoder_output),
        coverage=torch.zeros(batch_size, source_width, device=device) if options.beta else None,
        attention=(
            torch.zeros(batch_size, 0, source_width, device=device)
            if options.return_attention
            else None
        ),
    )
    prev_tokens = torch.full((batch_size,), BOS_ID, dtype=torch.long, device=device)
    row_encoder_output, row_encoder_sentences = encoder_output, first
    active = first  # sentences with live rows, ascending
    finished = FinishedHypotheses(batch_size, options.nbest, device)

    num_tokens = 0
    while active.numel() > 0:
        if not torch.equal(row_encoder_sentences, live.sentence):
            row_encoder_output = encoder_output.index_select(live.sentence)
            row_encoder_sentences = live.sentence
        log_probs, attention, live.state = model.decode_step(
            prev_tokens, live.state, row_encoder_output
        )
        log_probs = constrain_log_probs(
            log_probs.float(), num_tokens, max_tokens[live.sentence], options.min_length
        )
        if live.coverage is not None:
            live.coverage = live.coverage + attention
        if live.attention is not None:
            live.attention = torch.cat([live.attention, attention[:, None, :]], dim=1)

        row_group = torch.searchsorted(active, live.sentence)
        budgets = beam_size - finished.counts[active]
        chosen = select_top_k(log_probs, live.log_prob, row_group, live.slot, budgets, beam_size)
        ends = chosen.token == EOS_ID
        if ends.any():
            _finish(
                live, chosen, ends, active, num_tokens, source_mask, src_lengths, finished, options
            )
        num_tokens += 1

        # a sentence goes on while its best live extension can still beat its finished ones
        go_on = ~ends
        best_live = torch.full((active.numel(),), float("-inf"), device=device)
        best_live.scatter_reduce_(0, chosen.group[go_on], chosen.log_prob[go_on], "amax")
        can_improve = best_live / bound_penalty[active] > finished.thresholds[active]
        go_on &= can_improve[chosen.group]

        group = chosen.group[go_on]
        counts = torch.bincount(group, minlength=active.numel())
        slot = torch.arange(group.numel(), device=device) - (counts.cumsum(0) - counts)[group]
        prev_tokens = chosen.token[go_on]
        live = live.select(chosen.row[go_on], prev_tokens, chosen.log_prob[go_on], slot)
        active = active[can_improve]
    return finished.best()


def _finish(
    live: LiveRows,
    chosen: Selection,
    ends: Tensor,
    active: Tensor,
    num_tokens: int,
    source_mask: Tensor,
    src_lengths: Tensor,
    finished: FinishedHypotheses,
    options: DecodingOptions,
) -> None:
    """Score the hypotheses that just emitted EOS and file them under their sentences."""
    rows = chosen.row[ends]
    sentences = active[chosen.group[ends]]
    log_probs = chosen.log_prob[ends]
    lengths = torch.full_like(rows, num_tokens + 1)  # the tokens and the EOS
    if live.coverage is None:
        coverages = torch.zeros_like(log_probs)
    else:
        coverages = coverage_penalty(live.coverage[rows], source_mask[sentences], options.beta)
    scores = gnmt_score(log_probs, lengths, coverages, options.alpha)
    tokens = live.tokens[rows].tolist()
    for i, (sentence, score, log_prob) in enumerate(
        zip(sentences.tolist(), scores.tolist(), log_probs.tolist(), strict=True)
    ):
        attention = None
        if live.attention is not None:
            attention = live.attention[rows[i], :, : int(src_lengths[sentence])].clone()
        finished.add(sentence, Hypothesis(tokens[i], score, log_prob, attention))
