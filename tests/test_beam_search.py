"""Beam search against independent references.

Two hand-built models satisfy the decoding interface (encode / initial_decoder_state /
decode_step): ``TableModel``, whose step probabilities and attention are set by hand so that
every complete output can be enumerated and scored by brute force, and ``ToyAttentionModel``,
a small random GRU with attention for greedy, rescoring and batch-invariance checks.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import A, B, C, D, SimpleEncoderOutput, TableModel, greedy_reference
from torch import nn

from nmt.decoding import DecodingOptions, beam_search, translate_ids
from nmt.decoding.batching import pad_sources
from nmt.decoding.beam_search import BeamSearch
from nmt.decoding.penalties import coverage_penalty, length_penalty
from nmt.decoding.selection import select_top_k
from nmt.errors import UserError
from nmt.special_tokens import BOS_ID, EOS_ID


def brute_force(model: TableModel, source_length: int, alpha: float, beta: float):
    """Every complete output of a table model with its exact GNMT score, best first."""
    results = []

    def visit(prefix, log_p, coverage):
        step_attention = model.attention.get(prefix, [1.0 / source_length] * source_length)
        coverage = [c + a for c, a in zip(coverage, step_attention, strict=True)]
        for token, p in model.probs.get(prefix, {EOS_ID: 1.0}).items():
            if token != EOS_ID:
                visit((*prefix, token), log_p + math.log(p), coverage)
                continue
            total = log_p + math.log(p)
            lp = ((5 + len(prefix) + 1) / 6) ** alpha
            cp = beta * sum(math.log(min(c, 1.0)) for c in coverage)
            results.append((list(prefix), total / lp + cp, total))

    visit((), 0.0, [0.0] * source_length)
    return sorted(results, key=lambda r: -r[1])


def decode_table(model, options, source_length=3):
    src = torch.tensor([[A] * (source_length - 1) + [EOS_ID]])
    return beam_search(model, src, torch.tensor([source_length]), options)[0]


# greedy takes a (0.55) and then c: P(a c) = 0.22; the best output is b: P(b) = 0.405
GREEDY_TRAP = {
    (): {A: 0.55, B: 0.45},
    (A,): {C: 0.4, D: 0.35, EOS_ID: 0.25},
    (B,): {EOS_ID: 0.9, C: 0.1},
}

# [a] is most probable; a length penalty prefers [b c d]; a coverage penalty punishes [a],
# which attends to the first source position only
PENALTY_CHOICE = {
    (): {A: 0.55, B: 0.45},
    (A,): {EOS_ID: 0.6, C: 0.4},
    (B,): {C: 0.9, EOS_ID: 0.1},
    (B, C): {D: 0.6, EOS_ID: 0.4},
}
PENALTY_ATTENTION = {
    (): [0.8, 0.1, 0.1],
    (A,): [0.8, 0.1, 0.1],
    (B,): [0.1, 0.8, 0.1],
    (B, C): [0.1, 0.1, 0.8],
}


def test_penalty_formulas():
    lengths = torch.tensor([1, 2, 10])
    for alpha in (0.0, 0.6, 1.0):
        expected = [((5 + n) / 6) ** alpha for n in (1, 2, 10)]
        assert length_penalty(lengths, alpha).tolist() == pytest.approx(expected)
    coverage = torch.tensor([[0.5, 2.0, 0.25, 0.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    expected = [0.3 * (math.log(0.5) + 0.0 + math.log(0.25)), 0.0]
    assert coverage_penalty(coverage, mask, 0.3).tolist() == pytest.approx(expected)
    assert coverage_penalty(coverage, mask, 0.0).tolist() == [0.0, 0.0]


def test_top_k_keeps_each_sentence_to_its_own_block_and_budget():
    # sentence 0 has two live rows, sentence 1 one row; vocabulary of 4
    inf = float("-inf")
    log_probs = torch.tensor(
        [[-0.5, -4.5, 0.0, inf], [-0.2, -2.5, -1.5, -3.5], [-8.0, 0.9, -7.0, -6.0]]
    )
    chosen = select_top_k(
        log_probs,
        row_log_prob=torch.tensor([-0.5, -0.5, -1.0]),
        row_group=torch.tensor([0, 0, 1]),
        row_slot=torch.tensor([0, 1, 0]),
        budgets=torch.tensor([3, 2]),
        beam_size=3,
    )
    assert chosen.group.tolist() == [0, 0, 0, 1, 1]
    assert chosen.row.tolist() == [0, 1, 0, 2, 2]
    assert chosen.token.tolist() == [2, 0, 0, 1, 3]
    assert chosen.log_prob.tolist() == pytest.approx([-0.5, -0.7, -1.0, -0.1, -7.0])


def test_beam_finds_the_best_output_where_greedy_does_not():
    greedy = decode_table(TableModel(GREEDY_TRAP), DecodingOptions(beam_size=1, alpha=0.0))
    beam = decode_table(TableModel(GREEDY_TRAP), DecodingOptions(beam_size=2, alpha=0.0))
    assert greedy[0].tokens == [A, C]
    assert greedy[0].log_prob == pytest.approx(math.log(0.55 * 0.4))
    assert beam[0].tokens == [B]
    assert beam[0].log_prob == pytest.approx(math.log(0.45 * 0.9))


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0, 2.0])
@pytest.mark.parametrize("beta", [0.0, 0.1, 1.0])
def test_penalties_choose_as_the_formulas_say(alpha, beta):
    """A beam wide enough to see every output returns exactly the brute-force ranking."""
    model = TableModel(PENALTY_CHOICE, PENALTY_ATTENTION)
    expected = brute_force(model, source_length=3, alpha=alpha, beta=beta)
    options = DecodingOptions(beam_size=5, nbest=5, alpha=alpha, beta=beta)
    found = decode_table(model, options)
    assert [h.tokens for h in found] == [tokens for tokens, _, _ in expected]
    assert [h.score for h in found] == pytest.approx([score for _, score, _ in expected])
    assert [h.log_prob for h in found] == pytest.approx([lp for _, _, lp in expected])


def test_penalties_flip_the_choice():
    """The table is built so that each penalty alone changes the winner."""

    def best(alpha, beta):
        options = DecodingOptions(beam_size=5, alpha=alpha, beta=beta)
        return decode_table(TableModel(PENALTY_CHOICE, PENALTY_ATTENTION), options)[0].tokens

    assert best(0.0, 0.0) == [A]
    assert best(1.0, 0.0) == [B, C, D]
    assert best(0.0, 0.2) == [B, C, D]


def test_search_stops_when_no_live_hypothesis_can_win():
    # after one step [a] is finished with P 0.9; the live [b] (P 0.1) can never beat it
    chain = {(): {A: 0.9, B: 0.1}, (A,): {EOS_ID: 1.0}}
    chain.update({(B,) + (C,) * n: {C: 1.0} for n in range(50)})
    model = TableModel(chain)
    found = decode_table(model, DecodingOptions(beam_size=2, alpha=0.6, max_length=40))
    assert found[0].tokens == [A]
    assert model.steps == 2


def test_min_and_max_length():
    probs = {(): {EOS_ID: 0.5, A: 0.5}, (A,): {EOS_ID: 0.5, A: 0.5}}
    probs.update({(A,) * n: {EOS_ID: 0.5, A: 0.5} for n in range(2, 12)})
    found = decode_table(TableModel(probs), DecodingOptions(beam_size=3, alpha=0.0, min_length=3))
    assert found[0].tokens == [A, A, A]
    # the relative limit: int(0.5 * 3 + 1) = 2 tokens, then EOS is forced (and scored)
    options = DecodingOptions(
        beam_size=3, alpha=0.0, min_length=8, max_length_ratio=0.5, max_length_offset=1
    )
    found = decode_table(TableModel(probs), options)
    assert found[0].tokens == [A] * 8  # min_length wins over a lower relative limit
    options = DecodingOptions(beam_size=3, alpha=0.0, min_length=2, max_length=2, nbest=3)
    found = decode_table(TableModel(probs), options)
    assert [h.tokens for h in found] == [[A, A]]
    assert found[0].log_prob == pytest.approx(3 * math.log(0.5))


def test_options_are_checked():
    with pytest.raises(UserError, match="nbest"):
        DecodingOptions(beam_size=2, nbest=3)
    with pytest.raises(UserError, match="alpha"):
        DecodingOptions(alpha=-1.0)


# ---------------------------------------------------------------- a small neural model


class ToyAttentionModel(nn.Module):
    """Embeddings as encoder, a GRU cell with dot attention as decoder; random weights."""

    def __init__(self, vocab_size: int = 14, dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab_size, dim)
        self.encoder = nn.Linear(dim, dim)
        self.cell = nn.GRUCell(dim, dim)
        self.out = nn.Linear(2 * dim, vocab_size)
        with torch.no_grad():
            self.out.weight.mul_(8.0)  # peaked distributions and outputs of varied length

    def encode(self, src_ids, src_lengths):
        mask = torch.arange(src_ids.shape[1])[None, :] < src_lengths[:, None]
        return SimpleEncoderOutput(torch.tanh(self.encoder(self.embed(src_ids))), mask)

    def initial_decoder_state(self, encoder_output):
        mask = encoder_output.mask[:, :, None].float()
        return ((encoder_output.memory * mask).sum(1) / mask.sum(1),)

    def decode_step(self, prev_tokens, state, encoder_output):
        hidden = self.cell(self.embed(prev_tokens), state[0])
        energies = torch.einsum("bsd,bd->bs", encoder_output.memory, hidden)
        attention = energies.masked_fill(~encoder_output.mask, float("-inf")).softmax(-1)
        context = torch.einsum("bs,bsd->bd", attention, encoder_output.memory)
        logits = self.out(torch.cat([hidden, context], dim=-1))
        return logits.log_softmax(-1), attention, (hidden,)


def toy_sources(count: int, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 10, (count,), generator=generator)
    return [torch.randint(4, 14, (int(n),), generator=generator).tolist() for n in lengths]


def rescore(model, source: list[int], tokens: list[int]):
    """log P(tokens + EOS | source) and the attention summed over steps, by teacher forcing."""
    src = torch.tensor([source + [EOS_ID]])
    encoder_output = model.encode(src, torch.tensor([src.shape[1]]))
    state = model.initial_decoder_state(encoder_output)
    total, coverage, prev = 0.0, torch.zeros(src.shape[1]), BOS_ID
    for token in [*tokens, EOS_ID]:
        log_probs, attention, state = model.decode_step(torch.tensor([prev]), state, encoder_output)
        total += float(log_probs[0, token])
        coverage += attention[0]
        prev = token
    return total, coverage


@torch.no_grad()
def test_beam_one_is_greedy():
    model = ToyAttentionModel().eval()
    sources = toy_sources(12)
    options = DecodingOptions(beam_size=1, alpha=0.6, min_length=2, max_length=12)
    found = translate_ids(model, sources, options, batch_size=5)
    for source, hypotheses in zip(sources, found, strict=True):
        max_tokens = min(12, int(2.0 * (len(source) + 1) + 10))
        assert hypotheses[0].tokens == greedy_reference(model, source, 2, max_tokens)


@torch.no_grad()
@pytest.mark.parametrize("beta", [0.0, 0.4])
def test_nbest_sorted_distinct_and_scores_are_the_models(beta):
    model = ToyAttentionModel().eval()
    sources = toy_sources(6)
    options = DecodingOptions(beam_size=6, nbest=4, alpha=0.6, beta=beta, max_length=12)
    for source, hypotheses in zip(sources, translate_ids(model, sources, options, 3), strict=True):
        assert len(hypotheses) == 4
        scores = [h.score for h in hypotheses]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hypotheses}) == 4
        for h in hypotheses:
            log_prob, coverage = rescore(model, source, h.tokens)
            lp = ((5 + len(h.tokens) + 1) / 6) ** 0.6
            cp = beta * sum(math.log(min(float(c), 1.0)) for c in coverage)
            assert h.log_prob == pytest.approx(log_prob, abs=1e-4)
            assert h.score == pytest.approx(log_prob / lp + cp, abs=1e-4)


@torch.no_grad()
def test_attention_is_returned_per_step_over_the_real_source():
    model = ToyAttentionModel().eval()
    sources = toy_sources(5)
    options = DecodingOptions(beam_size=3, nbest=2, return_attention=True, max_length=12)
    for source, hypotheses in zip(sources, translate_ids(model, sources, options, 5), strict=True):
        for h in hypotheses:
            assert h.attention.shape == (len(h.tokens) + 1, len(source) + 1)
            assert torch.allclose(h.attention.sum(-1), torch.ones(len(h.tokens) + 1))


@torch.no_grad()
@pytest.mark.parametrize("beam_size", [1, 4])
def test_batch_invariance(beam_size):
    """A sentence gets the same output alone as in any mixed-length, padded batch."""
    model = ToyAttentionModel().eval()
    sources = toy_sources(10)
    options = DecodingOptions(
        beam_size=beam_size, nbest=beam_size, beta=0.2, max_length_ratio=1.0, max_length_offset=2
    )
    alone = [translate_ids(model, [s], options, 1)[0] for s in sources]
    for batch_size in (3, 10):
        # translate_ids sorts by length; this order mixes lengths inside every batch
        src_order = sorted(range(len(sources)), key=lambda i: (i * 7) % len(sources))
        for start in range(0, len(sources), batch_size):
            batch = src_order[start : start + batch_size]
            src_ids, src_lengths = pad_sources([sources[i] for i in batch])
            together = beam_search(model, src_ids, src_lengths, options)
            for index, hypotheses in zip(batch, together, strict=True):
                assert [h.tokens for h in hypotheses] == [h.tokens for h in alone[index]]
                expected = [h.score for h in alone[index]]
                assert [h.score for h in hypotheses] == pytest.approx(expected, abs=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("beam_size", [1, 4])
def test_sentences_joining_a_running_search_get_what_they_get_alone(beam_size):
    """Continuous batching: sentences added between steps, next to others with more tokens and
    wider or narrower sources, or into a search that has just emptied, decode as they do alone
    (attention and coverage penalty included)."""
    model = ToyAttentionModel().eval()
    sources = toy_sources(12, seed=3)
    options = DecodingOptions(
        beam_size=beam_size, nbest=beam_size, beta=0.2, return_attention=True, max_length=12
    )
    alone = [translate_ids(model, [s], options, 1)[0] for s in sources]
    arrivals = {0: [0, 1, 2], 1: [3], 3: [4, 5], 4: [6], 7: [7, 8, 9], 8: [10], 40: [11]}
    search, found, sizes = BeamSearch(model, options), {}, []
    for step in range(60):
        if step in arrivals:
            search.add(arrivals[step], *pad_sources([sources[i] for i in arrivals[step]]))
        sizes.append(len(search))
        found.update(search.step())
    assert sorted(found) == list(range(len(sources)))
    assert 0 in sizes[:40] and max(sizes) > 3  # it emptied, and it held several arrivals
    for index, hypotheses in found.items():
        expected = alone[index]
        assert [h.tokens for h in hypotheses] == [h.tokens for h in expected]
        assert [h.score for h in hypotheses] == pytest.approx([h.score for h in expected], abs=1e-5)
        for got, want in zip(hypotheses, expected, strict=True):
            assert torch.allclose(got.attention, want.attention, atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("beam_size", [1, 4])
def test_removed_sentences_leave_at_once_and_the_others_go_on_as_alone(beam_size):
    """``remove`` between steps: the removed sentences' rows are gone before the next step,
    and every other sentence decodes exactly as it does alone."""
    model = ToyAttentionModel().eval()
    sources = toy_sources(8, seed=5)
    options = DecodingOptions(
        beam_size=beam_size, nbest=beam_size, beta=0.2, return_attention=True, max_length=12
    )
    alone = [translate_ids(model, [s], options, 1)[0] for s in sources]
    search, found = BeamSearch(model, options), {}
    search.add(list(range(8)), *pad_sources(sources))
    found.update(search.step())
    gone = {1, 4, 6} - set(found)
    assert gone
    rows_before = search.live_rows
    removed_rows = int(sum(search.live.sentence.eq(search.keys.index(k)).sum() for k in gone))
    search.remove(gone)
    assert search.live_rows == rows_before - removed_rows and not gone & set(search.keys)
    while len(search):
        found.update(search.step())
    assert set(found) == set(range(8)) - gone
    for index, hypotheses in found.items():
        assert [h.tokens for h in hypotheses] == [h.tokens for h in alone[index]]
        expected = [h.score for h in alone[index]]
        assert [h.score for h in hypotheses] == pytest.approx(expected, abs=1e-5)
