"""The text-level translator (``nmt.decoding.translator``) against independent references.

Closed batches equal the beam search run sentence by sentence; a document equals its sentences
translated one by one, with its whitespace kept exactly; the open batch admits by cost, fairly
between requests, and a removed request's rows leave at once; a failure stays with its request; the
alignment of a hand-built model is the one worked out by hand.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import (
    TEST_DECODING,
    A,
    B,
    C,
    FailingWordpieces,
    TableModel,
    multi30k_lines,
    tiny_translation_model,
    train_wordpieces,
)

from nmt.decoding import translate_texts
from nmt.decoding.translator import Translator, TranslatorConfig
from nmt.errors import UserError
from nmt.special_tokens import EOS_ID


@pytest.fixture(scope="module")
def wordpieces(corpora):
    return train_wordpieces(corpora)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return tiny_translation_model()


def sentences_ending_in_a_full_stop(corpora, count: int) -> list[str]:
    lines = multi30k_lines(corpora, "test_2016_flickr", "en", 60)
    return [line for line in lines if line.endswith(".")][:count]


def run(translator: Translator) -> dict:
    """Step until the translator is empty; the finished requests by key."""
    finished = {}
    while len(translator):
        for item in translator.step():
            finished[item.key] = item
    return finished


def test_closed_batches_equal_the_beam_search_sentence_by_sentence(model, wordpieces, corpora):
    texts = multi30k_lines(corpora, "test_2016_flickr", "en", 7)
    translator = Translator(model, wordpieces, TEST_DECODING)
    options = translator.options(nbest=2)
    assert options.beam_size == TEST_DECODING.beam_size and options.nbest == 2
    found = translator.translate([texts[0], "  ", *texts[1:]], options, batch_size=3)
    assert found[1].text == "" and len(found) == len(texts) + 1
    alone = [translate_texts(model, wordpieces, [t], options, batch_size=1)[0] for t in texts]
    for translation, hypotheses in zip([found[0], *found[2:]], alone, strict=True):
        assert [c.text for c in translation.nbest] == [
            wordpieces.decode(h.tokens) for h in hypotheses
        ]
        assert [c.score for c in translation.nbest] == pytest.approx([h.score for h in hypotheses])
        assert translation.text == translation.nbest[0].text


def test_a_document_equals_its_sentences_one_by_one_whitespace_kept(model, wordpieces, corpora):
    sentences = sentences_ending_in_a_full_stop(corpora, 7)
    gaps = ["\n  ", " ", "  ", "\n", "\n\n\t", " ", "\r\n\r\n", "  \n\n"]
    document = "".join(gap + s for gap, s in zip(gaps, sentences, strict=False)) + gaps[-1]
    translator = Translator(model, wordpieces, TEST_DECODING)
    assert translator.split(document).sentences == sentences
    options = translator.options()
    text, translations = translator.translate_document(document, options)
    alone = [translator.translate([s], options, batch_size=1)[0].text for s in sentences]
    assert [t.text for t in translations] == alone
    expected = "".join(gap + t for gap, t in zip(gaps, alone, strict=False)) + gaps[-1]
    assert text == expected


def test_a_long_sentence_is_split_at_spaces_in_a_document_and_refused_as_a_text(model, wordpieces):
    words = "a man and a woman walk with a big black dog along a long sandy beach".split()
    long_sentence = " ".join(words * 2)  # no sentence end: one sentence to the splitter
    config = TranslatorConfig(max_source_tokens=12)
    translator = Translator(model, wordpieces, TEST_DECODING, config)
    with pytest.raises(UserError, match="text 0: .* more than the 12 the model takes"):
        translator.prepare(texts=[long_sentence])
    document = translator.split(f" {long_sentence}\n")
    assert len(document.sentences) > 2
    assert all(len(wordpieces.encode(s)) + 1 <= 12 for s in document.sentences)
    assert document.assemble(document.sentences) == f" {long_sentence}\n"
    assert " ".join(document.sentences).split() == words * 2


def test_cost_admission_keeps_the_limit_and_lets_a_small_request_in(model, wordpieces, corpora):
    """Room for two sentences: the large request's sentences join in order, two at a time; the
    small one that came after joins at the first free room instead of after all of them."""
    texts = multi30k_lines(corpora, "test_2016_flickr", "en", 9)
    options = TEST_DECODING
    largest = max(Translator.cost([wordpieces.encode(t)], options) for t in texts)
    limit = 2 * largest
    translator = Translator(model, wordpieces, options, TranslatorConfig(max_live_cost=limit))
    translator.add("large", translator.prepare(texts=texts[:8]), options)
    translator.add("small", translator.prepare(texts=texts[8:]), options)
    order, most = [], 0
    while len(translator):
        for item in translator.step():
            order.append(item.key)
            chunk = texts[:8] if item.key == "large" else texts[8:]
            alone = translate_texts(model, wordpieces, chunk, options, batch_size=1)
            assert [t.text for t in item.translations] == [
                wordpieces.decode(h[0].tokens) for h in alone
            ]
        most = max(most, translator.stats()["live_cost"])
        assert translator.stats()["live_cost"] <= limit
    assert order == ["small", "large"] and most > largest


class Ticks:
    """A clock that advances one second per reading: every unit of work takes one second."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def units_until_finished(translator: Translator, key: str) -> tuple[int, dict]:
    """Steps (units of work) until ``key`` finishes, and every request finished by then."""
    finished, units = {}, 0
    while key not in finished:
        units += 1
        finished.update((item.key, item) for item in translator.step())
    return units, finished


@pytest.mark.parametrize("weight", [1.0, 4.0])
def test_a_small_request_gets_most_of_the_time_beside_a_large_one(
    model, wordpieces, corpora, weight
):
    """Encoder passes and decoder steps are the units the searches share: a small request beside
    a large one finishes within its own units plus the large search's share (1 / (1 + weight)),
    and both translate as they do alone."""
    texts = multi30k_lines(corpora, "test_2016_flickr", "en", 9)
    options = TEST_DECODING
    config = TranslatorConfig(max_live_cost=10**6, large_share=0.0001, large_time_weight=weight)
    alone = Translator(model, wordpieces, options, TranslatorConfig(max_live_cost=10**6), Ticks())
    alone.add("small", alone.prepare(texts=texts[8:]), options)
    own, _ = units_until_finished(alone, "small")

    translator = Translator(model, wordpieces, options, config, Ticks())
    translator.add("large", translator.prepare(texts=texts[:8]), options)
    translator.add("small", translator.prepare(texts=texts[8:]), options)
    units, finished = units_until_finished(translator, "small")
    large_units = units - own
    assert large_units >= 1  # the large search was not starved
    assert large_units <= own / weight + 1
    finished.update(run(translator))
    for key, chunk in (("large", texts[:8]), ("small", texts[8:])):
        expected = translate_texts(model, wordpieces, chunk, options, batch_size=1)
        assert [t.text for t in finished[key].translations] == [
            wordpieces.decode(h[0].tokens) for h in expected
        ]


def test_large_requests_share_one_class_share_however_many_and_however_often_they_come(
    model, wordpieces, corpora
):
    """Two large searches (different beams) and a stream of large requests that leave after
    one unit each and come back (clients that disconnect): together they get the large class's
    share, not a share each or a fresh one every time."""
    texts = multi30k_lines(corpora, "test_2016_flickr", "en", 20)
    options, weight = TEST_DECODING, 4.0
    wide = replace(options, beam_size=options.beam_size + 1)
    config = TranslatorConfig(max_live_cost=10**6, large_share=0.0001, large_time_weight=weight)
    alone = Translator(model, wordpieces, options, TranslatorConfig(max_live_cost=10**6), Ticks())
    alone.add("small", alone.prepare(texts=texts[8:9]), options)
    own, _ = units_until_finished(alone, "small")

    translator = Translator(model, wordpieces, options, config, Ticks())
    translator.add("large", translator.prepare(texts=texts[:8]), options)
    translator.add("wide", translator.prepare(texts=texts[10:18]), wide)
    translator.add("small", translator.prepare(texts=texts[8:9]), options)
    units, leaving = 0, 0
    while "small" not in {item.key for item in translator.step()}:
        units += 1
        translator.remove(("leaving", leaving))
        leaving += 1
        translator.add(("leaving", leaving), translator.prepare(texts=texts[18:20]), options)
    assert units + 1 - own <= own / weight + 1


def test_a_removed_request_leaves_the_batch_at_once(model, wordpieces, corpora):
    texts = multi30k_lines(corpora, "test_2016_flickr", "en", 6)
    translator = Translator(model, wordpieces, TEST_DECODING)
    translator.add("gone", translator.prepare(texts=texts[:4]), TEST_DECODING)
    translator.add("kept", translator.prepare(texts=texts[4:]), TEST_DECODING)
    translator.step()
    before = translator.stats()
    translator.remove("gone")
    after = translator.stats()
    assert after["requests"] == 1 and after["live_sentences"] == 2
    assert 0 < after["live_rows"] < before["live_rows"]
    assert after["live_cost"] == Translator.cost(
        translator.prepare(texts=texts[4:]).sources, TEST_DECODING
    )
    finished = run(translator)
    assert list(finished) == ["kept"]
    alone = translate_texts(model, wordpieces, texts[4:], TEST_DECODING, batch_size=1)
    assert [t.text for t in finished["kept"].translations] == [
        wordpieces.decode(h[0].tokens) for h in alone
    ]


class FailingModel:
    """The real model, except that the decoder step number ``fail_at`` raises."""

    def __init__(self, model, fail_at: int) -> None:
        self.model, self.fail_at, self.calls = model, fail_at, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def decode_step(self, *args):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("a damaged weight")
        return self.model.decode_step(*args)


def test_a_failure_stays_with_its_request(model, wordpieces, corpora):
    texts = multi30k_lines(corpora, "test_2016_flickr", "en", 6)
    outputs = translate_texts(model, wordpieces, texts, TEST_DECODING, batch_size=6)
    poison = outputs[2][0].tokens
    assert all(h[0].tokens != poison for i, h in enumerate(outputs) if i != 2)
    failing = FailingWordpieces(wordpieces, poison, RuntimeError("damaged output"))
    translator = Translator(model, failing, TEST_DECODING)
    for index, text in enumerate(texts):
        translator.add(index, translator.prepare(texts=[text]), TEST_DECODING)
    finished = run(translator)
    assert "damaged output" in finished[2].error and finished[2].translations is None
    for index in set(range(6)) - {2}:
        assert finished[index].translations[0].text == wordpieces.decode(outputs[index][0].tokens)


def test_a_failed_step_fails_its_requests_and_the_translator_goes_on(model, wordpieces, corpora):
    texts = multi30k_lines(corpora, "test_2016_flickr", "en", 3)
    translator = Translator(FailingModel(model, fail_at=2), wordpieces, TEST_DECODING)
    translator.add("a", translator.prepare(texts=texts[:2]), TEST_DECODING)
    finished = run(translator)
    assert "decoding failed: a damaged weight" in finished["a"].error
    assert translator.stats()["live_rows"] == 0
    translator.add("b", translator.prepare(texts=texts[2:]), TEST_DECODING)
    expected = translate_texts(model, wordpieces, texts[2:], TEST_DECODING, batch_size=1)
    assert run(translator)["b"].translations[0].text == wordpieces.decode(expected[0][0].tokens)


class LetterPieces:
    """Wordpieces of the table model: one letter a token."""

    letters = {A: "a", B: "b", C: "c"}

    def encode(self, text: str) -> list[int]:
        ids = {letter: token for token, letter in self.letters.items()}
        return [ids[letter] for letter in text.split()]

    def decode(self, ids) -> str:
        return " ".join(self.letters[int(i)] for i in ids if int(i) != EOS_ID)

    def pieces(self, ids) -> list[str]:
        return [self.letters[int(i)] for i in ids]


def test_alignment_is_the_argmax_attention_per_target_token_by_hand():
    """Source "a b" (+ EOS); the model writes "c a" with these attentions per step:
    step 1 (writes c): a 0.1, b 0.3, EOS 0.6 -> EOS left out, so c aligns to b (1);
    step 2 (writes a): a 0.7, b 0.2, EOS 0.1 -> a (0); step 3 (EOS) is not a target token."""
    probs = {(): {C: 1.0}, (C,): {A: 1.0}, (C, A): {EOS_ID: 1.0}}
    attention = {(): [0.1, 0.3, 0.6], (C,): [0.7, 0.2, 0.1], (C, A): [0.2, 0.2, 0.6]}
    translator = Translator(TableModel(probs, attention), LetterPieces())
    options = translator.options(beam_size=2, alignment=True)
    [translation] = translator.translate(["a b"], options, batch_size=1)
    assert translation.text == "c a"
    assert translation.alignment.source_tokens == ["a", "b"]
    assert translation.alignment.target_tokens == ["c", "a"]
    assert translation.alignment.pairs == [(1, 0), (0, 1)]
    assert translator.translate(["a b"], translator.options(), 1)[0].alignment is None
