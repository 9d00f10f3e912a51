"""The HTTP server, for real: `nmt serve` on 127.0.0.1 on a free port, started and stopped here.

One server per module serves tiny untrained bundles of all three tasks (its start-up is the
slow part). Answers are checked against the same bundles run in this process; concurrent
requests must come back right and must have been decoded together; every bad input gets a 4xx
and the server keeps serving; SIGTERM and SIGINT leave no process behind.
"""

from __future__ import annotations

import base64
import io
import math
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
import torch
from helpers import (
    BATCH_TIMEOUT,
    TEST_DECODING,
    FailingWordpieces,
    Server,
    multi30k_lines,
    running_server,
    stop_server,
    tiny_char_lm,
    tiny_classifier,
    tiny_translation_model,
    train_wordpieces,
)

from nmt.bundle import load_bundle, read_manifest, write_bundle
from nmt.cli import main as nmt_main
from nmt.decoding import translate_texts
from serve.translation_api import AdmissionConfig


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, corpora) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("bundles")
    wordpieces = train_wordpieces(corpora)
    lm, symbols = tiny_char_lm(corpora)
    return {
        "translate": write_bundle(
            directory / "en-de",
            task="translation",
            model=tiny_translation_model(),
            wordpieces=wordpieces.model_bytes,
            decoding=TEST_DECODING,
        ),
        "classify": write_bundle(directory / "mnist", task="classify", model=tiny_classifier()),
        "lm": write_bundle(directory / "ptb", task="char_lm", model=lm, vocabulary=symbols),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory, bundles) -> Server:
    args = [item for task, path in bundles.items() for item in (f"--{task}", str(path))]
    with running_server(tmp_path_factory.mktemp("serve"), args, bundles) as running:
        yield running


@pytest.fixture(scope="module")
def loaded(bundles) -> dict:
    torch.set_num_threads(1)
    return {task: load_bundle(path) for task, path in bundles.items()}


def in_process_translations(bundle, texts: list[str], nbest: int = 1) -> list[list[tuple]]:
    options = (
        TEST_DECODING
        if nbest == 1
        else TEST_DECODING.__class__(**{**TEST_DECODING.to_dict(), "nbest": nbest})
    )
    found = translate_texts(bundle.model, bundle.wordpieces, texts, options, batch_size=64)
    return [[(bundle.wordpieces.decode(h.tokens), h.score) for h in hyps] for hyps in found]


# ----------------------------------------------------------------------------- endpoints


def test_health_models_and_openapi(server):
    assert server.get("/health").status_code == 200
    models = server.get("/models").json()
    assert set(models["models"]) == {"translation", "classify", "char_lm"}
    translation = models["models"]["translation"]
    assert translation["manifest"] == read_manifest(server.bundles["translate"])
    assert translation["decoding"]["beam_size"] == TEST_DECODING.beam_size
    endpoint = translation["endpoints"]["/translate"]
    assert endpoint["batching"] == "continuous" and endpoint["join_window"] == BATCH_TIMEOUT
    assert endpoint["max_live_cost"] == AdmissionConfig.max_live_cost
    assert set(models["models"]["char_lm"]["endpoints"]) == {
        "/lm/score",
        "/lm/generate",
        "/lm/scalings",
    }
    assert models["limits"]["max_beam_size"] >= 1

    schema = server.get("/openapi.json").json()
    for path in ("/translate", "/classify", "/lm/score", "/lm/generate"):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["$ref"].startswith("#/components/schemas/")
        assert "200" in schema["paths"][path]["post"]["responses"]
    for path in ("/health", "/models", "/stats"):
        assert "get" in schema["paths"][path]
    request = schema["components"]["schemas"]["TranslateRequest"]["properties"]
    assert {"text", "document", "beam_size", "alpha", "beta", "nbest", "alignment"} <= set(request)
    assert request["document"]["anyOf"][0]["maxLength"] >= 100_000
    components = schema["components"]["schemas"]
    assert {"document", "translations"} <= set(components["TranslateResponse"]["properties"])
    assert {"source_tokens", "target_tokens", "alignment"} <= set(
        components["Translation"]["properties"]
    )


def test_translate_as_in_process(server, loaded, corpora):
    texts = multi30k_lines(corpora, "test_2016_flickr", "en", 5)
    expected = in_process_translations(loaded["translate"], texts, nbest=2)
    answer = server.post("/translate", {"text": texts, "nbest": 2})
    assert answer.status_code == 200, answer.text
    translations = answer.json()["translations"]
    assert len(translations) == len(texts)
    for translation, hypotheses in zip(translations, expected, strict=True):
        assert translation["text"] == hypotheses[0][0]
        assert [c["text"] for c in translation["nbest"]] == [text for text, _ in hypotheses]
        assert [c["score"] for c in translation["nbest"]] == pytest.approx(
            [score for _, score in hypotheses], rel=1e-4
        )
    one = server.post("/translate", {"text": texts[0]}).json()["translations"]
    assert [t["text"] for t in one] == [expected[0][0][0]] and one[0]["nbest"] is None


def test_concurrent_requests_are_served_right_and_batched(server, loaded, corpora):
    texts = multi30k_lines(corpora, "test_2016_flickr", "en", 12)
    expected = [hyps[0][0] for hyps in in_process_translations(loaded["translate"], texts)]
    before = server.get("/stats").json()["/translate"]["histogram"]
    start = threading.Barrier(len(texts))

    def translate_one(text: str) -> str:
        start.wait()
        answer = server.post("/translate", {"text": text})
        assert answer.status_code == 200, answer.text
        return answer.json()["translations"][0]["text"]

    with ThreadPoolExecutor(len(texts)) as pool:
        assert list(pool.map(translate_one, texts)) == expected
    after = server.get("/stats").json()["/translate"]["histogram"]
    # decoder steps by the number of requests they advanced together
    new_steps = {int(size): after[size] - before.get(size, 0) for size in after}
    assert max(size for size, n in new_steps.items() if n) > 1, new_steps


def test_a_short_request_does_not_wait_for_a_long_one(loaded, corpora):
    """Continuous batching, step by step: a request that joins a running search is answered
    as soon as its own text is decided, with what it gets alone; the long one comes later.
    (The untrained model runs every output to its length limit, 2 x source + 10 here.)"""
    from dataclasses import replace

    from nmt.decoding.translator import Translator

    bundle = loaded["translate"]
    defaults = replace(bundle.decoding, max_length=100)
    long_texts = multi30k_lines(corpora, "test_2016_flickr", "en", 24)
    short_text = "A dog."
    translator = Translator(bundle.model, bundle.wordpieces, defaults)
    options = translator.options(nbest=2)
    translator.add("long", translator.prepare(texts=long_texts), options)
    answers, steps = {}, 0
    while "short" not in answers:
        if steps == 2:
            translator.add("short", translator.prepare(texts=[short_text]), translator.options())
        answers.update((item.key, item) for item in translator.step())
        steps += 1
    assert "long" not in answers and len(translator) == 1
    while len(translator):
        answers.update((item.key, item) for item in translator.step())
    alone = translate_texts(bundle.model, bundle.wordpieces, long_texts, options, batch_size=5)
    for translation, hypotheses in zip(answers["long"].translations, alone, strict=True):
        assert [c.text for c in translation.nbest] == [
            bundle.wordpieces.decode(h.tokens) for h in hypotheses
        ]
        assert [c.score for c in translation.nbest] == pytest.approx(
            [h.score for h in hypotheses], rel=1e-4
        )
    short_alone = translate_texts(bundle.model, bundle.wordpieces, [short_text], defaults, 1)
    assert answers["short"].translations[0].text == bundle.wordpieces.decode(
        short_alone[0][0].tokens
    )


class RecordingTransport:
    """Stands in for LitServe's transport: keeps the answers, stops the loop after ``last``."""

    def __init__(self, queue, last: str) -> None:
        self.queue, self.last, self.answers = queue, last, {}

    def send(self, item, consumer_id: int) -> None:
        uid, (data, status, _, _) = item
        self.answers[uid] = (data, status)
        if uid == self.last:
            self.queue.put((None, None, None, None))  # LitServe's stop sentinel


def run_worker_loop(api, arrivals: list[tuple], last: str, clock=time.monotonic) -> dict:
    """The model worker's loop in this process over ``arrivals`` (uid, arrival time,
    request); returns each uid's (status code or 200, data), stopping after ``last``."""
    import pickle
    from queue import Queue

    from litserve.utils import LitAPIStatus

    from serve.translation_api import TranslateLoop

    queue = Queue()
    for uid, arrived, request in arrivals:
        queue.put((0, uid, arrived, request))
    transport = RecordingTransport(queue, last)
    TranslateLoop(clock=clock)(api, "cpu", 0, queue, transport, {}, None)
    answers = {}
    for uid, (data, status) in transport.answers.items():
        if status == LitAPIStatus.ERROR:
            error = pickle.loads(pickle.dumps(data))
            answers[uid] = (error.status_code, error.detail)
        else:
            answers[uid] = (200, data)
    return answers


def worker_api(bundle: Path, timeout: float = 30.0, **admission):
    from serve.translation_api import AdmissionConfig, TranslateAPI

    api = TranslateAPI(str(bundle), admission=AdmissionConfig(join_window=0.0, **admission))
    api.setup("cpu")
    api.request_timeout = timeout
    return api


def test_translate_timeout_counts_from_arrival_to_answer(bundles, corpora):
    """The worker loop, in process, on a clock that moves one second at every look: a request
    that waited too long in the queue and one that runs out of time while decoding both get a
    504 (the late one leaves the batch then); the request beside them is answered."""
    import itertools

    from serve.schemas import TranslateRequest

    api = worker_api(bundles["translate"], decode_rate=1e9)
    texts = multi30k_lines(corpora, "test_2016_flickr", "en", 8)
    # the loop looks at the clock about twice per step; the untrained model takes 13 steps
    # (max_length 12 + EOS), and "late" passes 30 s within a few of them.
    clock = itertools.count(1000.0)
    answers = run_worker_loop(
        api,
        [
            ("queued too long", 900.0, TranslateRequest(text=texts[0])),
            ("late while decoding", 975.0, TranslateRequest(text=texts)),
            ("in time", 1000.0, TranslateRequest(text=texts[1])),
        ],
        last="in time",
        clock=lambda: next(clock),
    )
    assert list(answers) == ["queued too long", "late while decoding", "in time"]
    assert answers["queued too long"][0] == 504 and answers["late while decoding"][0] == 504
    status, data = answers["in time"]
    assert status == 200
    expected = in_process_translations(load_bundle(bundles["translate"]), [texts[1]])
    assert data.translations[0].text == expected[0][0][0]
    assert api.stats.load()["removed"] == 1  # the late one's rows left the batch


def test_a_failing_request_gets_its_500_and_its_neighbours_their_answers(bundles, corpora):
    from serve.schemas import TranslateRequest

    api = worker_api(bundles["translate"])
    texts = multi30k_lines(corpora, "test_2016_flickr", "en", 6)
    expected = translate_texts(
        api.bundle.model, api.bundle.wordpieces, texts, TEST_DECODING, batch_size=6
    )
    poison = expected[3][0].tokens
    assert all(h[0].tokens != poison for i, h in enumerate(expected) if i != 3)
    api.translator.wordpieces = FailingWordpieces(api.bundle.wordpieces, poison)
    now = time.monotonic()
    arrivals = [(f"r{i}", now, TranslateRequest(text=text)) for i, text in enumerate(texts)]
    arrivals.append(("after", now, TranslateRequest(text=texts[0])))  # the worker goes on
    answers = run_worker_loop(api, arrivals, last="after")
    assert answers["r3"] == (500, "could not format the translation: piece id is out of range")
    for i in (0, 1, 2, 4, 5):
        status, data = answers[f"r{i}"]
        assert status == 200
        assert data.translations[0].text == api.bundle.wordpieces.decode(expected[i][0].tokens)
    assert answers["after"][0] == 200


def test_a_request_past_the_queue_bound_gets_503_with_retry_after(bundles, corpora):
    from serve.schemas import TranslateRequest
    from serve.translation_api import _http_exception

    texts = multi30k_lines(corpora, "test_2016_flickr", "en", 4)
    request = TranslateRequest(text=texts)
    api = worker_api(bundles["translate"])
    prepared = api.translator.prepare(texts=texts)
    cost = api.translator.cost(prepared.sources, api.translator.options())
    largest = max(api.translator.cost([ids], api.translator.options()) for ids in prepared.sources)
    # one sentence decodes at a time; the first two requests wait their turn, the third finds
    # the queue full
    api = worker_api(
        bundles["translate"], max_live_cost=largest, max_queued_cost=2 * cost, decode_rate=100.0
    )
    now = time.monotonic()
    arrivals = [("first", now, request), ("second", now, request), ("third", now, request)]
    answers = run_worker_loop(api, arrivals, last="second")
    assert answers["first"][0] == 200 and answers["second"][0] == 200
    status, detail = answers["third"]
    assert status == 503 and detail["retry_after"] >= 1
    error = _http_exception(PickleableHTTP(503, detail))
    assert error.headers == {"Retry-After": str(detail["retry_after"])}


def PickleableHTTP(status: int, detail):
    from litserve.utils import PickleableHTTPException

    return PickleableHTTPException(status, detail)


def mnist_test_image(corpora: Path) -> list[list[int]]:
    from data_prep.mnist import read_idx

    return read_idx(corpora / "mnist" / "t10k-images-idx3-ubyte.gz")[0].tolist()


def png_base64(pixels: list[list[int]], size: int = 28) -> str:
    from PIL import Image

    image = Image.new("L", (size, size))
    image.putdata([value for row in pixels for value in row][: size * size])
    data = io.BytesIO()
    image.save(data, "PNG")
    return base64.b64encode(data.getvalue()).decode()


def test_classify_pixels_and_png(server, loaded, corpora):
    pixels = mnist_test_image(corpora)
    with torch.no_grad():  # the model reads intensities in [0, 1]; requests send 0-255
        logits = loaded["classify"].model(
            torch.tensor(pixels, dtype=torch.float32)[None, None] / 255
        )
    expected = torch.softmax(logits, -1)[0].tolist()
    for body in ({"pixels": pixels}, {"png": png_base64(pixels)}):
        answer = server.post("/classify", body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["probabilities"] == pytest.approx(expected, abs=1e-6)
        assert answer.json()["digit"] == max(range(10), key=expected.__getitem__)


def test_lm_score_and_generate(server, loaded):
    bundle = loaded["lm"]
    text = "the cat sat"
    symbols = bundle.vocabulary.symbols
    index = {symbol: i for i, symbol in enumerate(symbols)}
    ids = [index["\n"], *(index["_" if c == " " else c] for c in text), index["\n"]]
    with torch.no_grad():
        logits, _ = bundle.model(torch.tensor([ids[:-1]]))
    log_probs = torch.log_softmax(logits, -1)[0, torch.arange(len(ids) - 1), ids[1:]]
    answer = server.post("/lm/score", {"text": text}).json()
    assert answer["characters"] == len(text) + 1
    assert answer["bits_per_character"] == pytest.approx(-log_probs.mean().item() / math.log(2))

    request = {"prefix": "the ", "length": 25, "temperature": 0.8, "seed": 7}
    first = server.post("/lm/generate", request).json()["text"]
    assert first == server.post("/lm/generate", request).json()["text"]
    assert len(first) == 25
    greedy = server.post("/lm/generate", {**request, "temperature": 0.0}).json()["text"]
    expected = bundle.model.sample([index["\n"], *(index[c] for c in "the_")], 25, 0.0)
    assert greedy == "".join(" " if symbols[i] == "_" else symbols[i] for i in expected)


def real_document(corpora: Path) -> tuple[str, list[str]]:
    """Multi30k sentences laid out as a user's text: paragraphs, line breaks, odd spaces."""
    lines = multi30k_lines(corpora, "test_2016_flickr", "en", 40)
    sentences = [line for line in lines if line.endswith(".")][:9]
    gaps = ["  ", " ", "\n", "  ", "\n\n", "\t", " ", "\r\n\r\n   ", " ", "\n\n\n"]
    text = "".join(gap + sentence for gap, sentence in zip(gaps, sentences, strict=False))
    return text + gaps[-1], sentences


def test_a_document_is_its_sentences_translated_one_by_one_whitespace_kept(server, loaded, corpora):
    document, sentences = real_document(corpora)
    alone = [in_process_translations(loaded["translate"], [s])[0][0][0] for s in sentences]
    answer = server.post("/translate", {"document": document})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [t["text"] for t in body["translations"]] == alone
    expected = document
    for sentence, translation in zip(sentences, alone, strict=True):
        expected = expected.replace(sentence, translation, 1)
    assert body["document"] == expected
    texts = server.post("/translate", {"text": sentences}).json()
    assert "document" not in texts and [t["text"] for t in texts["translations"]] == alone


def test_cli_and_server_agree_on_nbest_and_alignment(server, corpora, tmp_path, capsys):
    import json

    texts = multi30k_lines(corpora, "test_2016_flickr", "en", 4)
    source = tmp_path / "test.en"
    source.write_text("".join(f"{text}\n" for text in texts), encoding="utf-8")
    code = nmt_main(
        ["translate", "--bundle", str(server.bundles["translate"]), "--input", str(source),
         "--nbest", "2", "--alignment", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    cli = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    answer = server.post("/translate", {"text": texts, "nbest": 2, "alignment": True})
    assert answer.status_code == 200, answer.text
    served = answer.json()["translations"]
    for mine, theirs in zip(cli, served, strict=True):
        assert mine["text"] == theirs["text"]
        assert [c["text"] for c in mine["nbest"]] == [c["text"] for c in theirs["nbest"]]
        assert mine["score"] == pytest.approx(theirs["score"], rel=1e-5)
        for field in ("source_tokens", "target_tokens", "alignment"):
            assert mine[field] == theirs[field]
        assert len(theirs["alignment"]) == len(theirs["target_tokens"])
        assert all(0 <= s < len(theirs["source_tokens"]) for s, _ in theirs["alignment"])
    plain = server.post("/translate", {"text": texts[0]}).json()["translations"][0]
    assert not {"alignment", "source_tokens", "target_tokens"} & set(plain)


# ----------------------------------------------------------------------------- admission

TIGHT_LIVE_COST = 3000  # live rows x source wordpieces per worker, for the admission server


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory, bundles) -> Server:
    """A /translate server with a small capacity, so a burst fills it and waits in order."""
    args = ["--translate", str(bundles["translate"]), "--max-live-cost", str(TIGHT_LIVE_COST)]
    args += ["--max-queued-cost", "200000", "--decode-rate", "5000"]
    with running_server(tmp_path_factory.mktemp("tight"), args, bundles) as running:
        yield running


def translate_load(server: Server) -> dict:
    return server.get("/stats").json()["/translate"]["load"]


def test_over_cost_requests_are_refused_up_front(tight_server, loaded, corpora):
    words = " ".join(multi30k_lines(corpora, "test_2016_flickr", "en", 12)).split()
    encode = loaded["translate"].wordpieces.encode
    long_text = next(  # fits the model (256), but 16 beams of it exceed the capacity
        text
        for n in range(len(words))
        if 16 * (len(encode(text := " ".join(words[:n]))) + 1) > TIGHT_LIVE_COST
    )
    answer = tight_server.post("/translate", {"text": long_text, "beam_size": 16})
    assert answer.status_code == 413 and "a worker holds" in answer.json()["detail"], answer.text
    document, _ = real_document(corpora)
    huge = (document * 400)[:100_000]  # about 1,300 sentences at beam 16: minutes of work
    answer = tight_server.post("/translate", {"document": huge, "beam_size": 16})
    assert answer.status_code == 413 and "timeout" in answer.json()["detail"], answer.text
    assert translate_load(tight_server)["requests"] == 0  # nothing was queued


def test_a_disconnected_clients_rows_leave_the_batch(tight_server, loaded, corpora):
    """A document of about 600 sentences fills the worker's capacity ten times over, and each
    fill takes 13 decoder steps (the untrained model runs to its length cap, 12 + EOS); its
    client leaves at once, and it is removed long before it could get them all."""
    document, _ = real_document(corpora)
    document *= 60
    sentences = [s for s in document.split(".") if s.strip()]
    encode = loaded["translate"].wordpieces.encode
    cost = sum(TEST_DECODING.beam_size * (len(encode(s + ".")) + 1) for s in sentences)
    needed = 13 * (cost // TIGHT_LIVE_COST)  # steps to decode it all, at least
    assert needed > 100
    before = translate_load(tight_server)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(tight_server.url + "/translate", json={"document": document}, timeout=0.3)
    deadline = time.monotonic() + 60
    while (load := translate_load(tight_server))["removed"] == before["removed"]:
        assert time.monotonic() < deadline, load
        time.sleep(0.2)
    assert load["requests"] == 0 and load["live_rows"] == 0 and load["queued_sentences"] == 0
    assert load["steps"] - before["steps"] < needed // 2


def test_a_burst_of_maximum_requests_keeps_within_capacity(tight_server, corpora):
    """Many requests at the limits at once: each is answered (200, or 503 with Retry-After past
    the queue bound), the live cost never exceeds the capacity, and the worker's memory stays
    within a small bound of where it started."""
    texts = [line[:1000] for line in multi30k_lines(corpora, "test_2016_flickr", "en", 64)]
    body = {"text": texts, "beam_size": 4}
    worker = max(
        psutil.Process(tight_server.process.pid).children(recursive=True),
        key=lambda p: p.memory_info().rss,
    )
    rss_before = worker.memory_info().rss
    highest, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            highest[0] = max(highest[0], translate_load(tight_server)["live_cost"])
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: tight_server.post("/translate", body), range(8)))
    finally:
        stop.set()
        watcher.join()
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses
    assert all("Retry-After" in a.headers for a in answers if a.status_code == 503)
    assert 0 < highest[0] <= TIGHT_LIVE_COST
    assert worker.memory_info().rss - rss_before < 200 << 20


# ----------------------------------------------------------------------------- bad input

NAN_PIXELS = b'{"pixels": [' + b",".join([b"[" + b",".join([b"0"] * 28) + b"]"] * 27) + b","
NAN_PIXELS += b"[" + b",".join([b"0"] * 27 + [b"NaN"]) + b"]]}"
ZEROS = [[0] * 28 for _ in range(28)]

BAD_INPUTS = {
    # name: (path, body: JSON-able or raw bytes, expected status, words in the message)
    "invalid-json": ("/translate", b'{"text": "a"', 422, "not valid JSON"),
    "invalid-utf8": ("/translate", b'{"text": "a\xff\xfe"}', 400, "UTF-8"),
    "not-an-object": ("/translate", [1, 2], 422, "JSON object"),
    "text-wrong-type": ("/translate", {"text": 5}, 422, "string or a list"),
    "text-empty": ("/translate", {"text": ""}, 422, "at least 1 character"),
    "text-blank": ("/translate", {"text": ["a dog", "   "]}, 422, "blank"),
    "texts-empty": ("/translate", {"text": []}, 422, "at least 1 item"),
    "too-many-texts": ("/translate", {"text": ["a"] * 65}, 422, "at most 64"),
    "text-and-document": ("/translate", {"text": "a", "document": "b"}, 422, "exactly one"),
    "no-text": ("/translate", {"beam_size": 2}, 422, "exactly one"),
    "document-blank": ("/translate", {"document": " \n "}, 422, "blank"),
    "document-too-long": ("/translate", {"document": "a" * 100_001}, 422, "at most 100000"),
    "text-too-many-wordpieces": ("/translate", {"text": "x " * 400}, 422, "the model takes"),
    "alignment-string": ("/translate", {"text": "a", "alignment": "yes"}, 422, "valid boolean"),
    "text-too-long": ("/translate", {"text": "a" * 1001}, 422, "at most 1000"),
    "beam-too-big": ("/translate", {"text": "a", "beam_size": 17}, 422, "beam_size"),
    "beam-zero": ("/translate", {"text": "a", "beam_size": 0}, 422, "beam_size"),
    "beam-string": ("/translate", {"text": "a", "beam_size": "5"}, 422, "valid integer"),
    "nbest-over-beam": ("/translate", {"text": "a", "beam_size": 2, "nbest": 3}, 422, "nbest"),
    "alpha-nan": ("/translate", b'{"text": "a", "alpha": NaN}', 422, "finite"),
    "beta-negative": ("/translate", {"text": "a", "beta": -1}, 422, "beta"),
    "unknown-field": ("/translate", {"text": "a", "beam": 3}, 422, "beam: Extra inputs"),
    "oversized-body": ("/translate", {"text": "a" * (2 << 20)}, 413, "too large"),
    "pixel-nan": ("/classify", NAN_PIXELS, 422, "pixels.27.27: Input should be a finite"),
    "pixel-too-big": ("/classify", {"pixels": [[256] * 28] * 28}, 422, "less than or equal"),
    "pixel-negative": ("/classify", {"pixels": [[-1] * 28] * 28}, 422, "greater than or equal"),
    "pixel-string": ("/classify", {"pixels": [["0"] * 28] * 28}, 422, "valid number"),
    "rows-missing": ("/classify", {"pixels": ZEROS[:27]}, 422, "at least 28"),
    "row-too-long": ("/classify", {"pixels": [[0] * 29] * 28}, 422, "at most 28"),
    "no-image": ("/classify", {}, 422, "exactly one"),
    "two-images": ("/classify", {"pixels": ZEROS, "png": "AAAA"}, 422, "png"),
    "png-not-base64": ("/classify", {"png": "not base64!"}, 422, "base64"),
    "png-not-png": ("/classify", {"png": base64.b64encode(b"GIF89a").decode()}, 422, "PNG"),
    "score-empty": ("/lm/score", {"text": ""}, 422, "at least 1 character"),
    "score-unknown-char": ("/lm/score", {"text": "caf\u00e9"}, 422, "'\u00e9' is not in"),
    "generate-too-long": ("/lm/generate", {"length": 1001}, 422, "length"),
    "generate-zero": ("/lm/generate", {"length": 0}, 422, "length"),
    "temperature-high": ("/lm/generate", {"temperature": 50}, 422, "temperature"),
    "temperature-nan": ("/lm/generate", b'{"temperature": NaN}', 422, "temperature"),
    "prefix-unknown-char": ("/lm/generate", {"prefix": "\u4e2d"}, 422, "prefix[0]"),
}
GOOD = {
    "/translate": {"text": "A dog runs."},
    "/classify": {"pixels": ZEROS},
    "/lm/score": {"text": "a dog"},
    "/lm/generate": {"length": 5},
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_4xx_then_the_server_keeps_serving(server, case):
    path, body, status, words = BAD_INPUTS[case]
    if isinstance(body, bytes):
        answer = requests.post(
            server.url + path, data=body, headers={"Content-Type": "application/json"}, timeout=60
        )
    else:
        answer = server.post(path, body)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"], answer.text
    good = server.post(path, GOOD[path])
    assert good.status_code == 200, good.text


def test_png_of_the_wrong_size_is_refused(server):
    answer = server.post("/classify", {"png": png_base64([[0] * 30] * 30, size=30)})
    assert answer.status_code == 422 and "30x30" in answer.json()["detail"]


def test_model_workers_import_neither_lightning_nor_deepspeed(bundles):
    """What a model worker runs (build the server, set each endpoint up), in a fresh process."""
    paths = {task: str(path) for task, path in bundles.items()}
    script = f"""
import sys
from serve.app import ServeOptions, build_server
server = build_server(ServeOptions(**{paths!r}))
for api in server.litapi_connector:
    api.setup("cpu")
heavy = [name for name in sys.modules if name.split(".")[0] in ("lightning", "deepspeed")]
assert not heavy, heavy
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- shutdown


def test_sigint_stops_every_process(tmp_path, bundles):
    with running_server(tmp_path, ["--classify", str(bundles["classify"])], bundles) as small:
        assert small.post("/classify", GOOD["/classify"]).status_code == 200
        assert stop_server(small, signal.SIGINT) == []
    assert "Traceback" not in small.log.read_text(), small.log.read_text()


def test_sigterm_stops_every_process(tmp_path, bundles):
    args = [item for task, path in bundles.items() for item in (f"--{task}", str(path))]
    with running_server(tmp_path, args, bundles) as server:
        workers = psutil.Process(server.process.pid).children(recursive=True)
        assert len(workers) >= 4  # a model worker per endpoint, the HTTP worker, the queue manager
        assert stop_server(server, signal.SIGTERM) == []
    assert server.process.returncode == 0
    assert "Traceback" not in server.log.read_text(), server.log.read_text()
