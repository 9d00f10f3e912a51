"""The web page at ``GET /``, in a real browser, against a real server with tiny trained bundles.

Each bundle is trained here for a few seconds (enough for answers that are not uniform noise),
exported, and served by ``nmt serve`` on 127.0.0.1. The page is driven by Playwright through
Debian's Chromium (``/usr/bin/chromium``; nothing is downloaded). What the page shows is checked
against the same request sent to the server directly. Screenshots of each panel go to the test's
output folder.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import requests
import torch
from helpers import (
    TEST_DECODING,
    multi30k_lines,
    running_server,
    tiny_char_lm,
    tiny_classifier,
    tiny_translation_model,
    train_wordpieces,
)

from nmt.bundle import load_bundle, write_bundle
from nmt.decoding.batching import pad_sources
from nmt.special_tokens import BOS_ID, EOS_ID, PAD_ID

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TRAIN_STEPS = 40  # a few seconds per tiny model on one busy core
LEARNING_RATE = 0.01
BATCH = 32
CLASSIFIER_STEPS = 150  # the small ConvNet takes a few milliseconds a step
TRANSLATION_PAIRS = 1  # a short Multi30k training pair, learnt by heart
SHORT_CHARS = 24
CORPUS_LINES = 5000  # where the short pairs are looked for
TRANSLATION_STEPS = 80
TRANSLATION_LEARNING_RATE = 0.03
ANSWER_MS = 60_000  # a first request may wait for a worker on a busy machine
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


# ----------------------------------------------------------------------------- tiny bundles


def fit(
    model: torch.nn.Module, loss_of_batch, steps: int = TRAIN_STEPS, rate: float = LEARNING_RATE
) -> torch.nn.Module:
    """A few Adam steps; ``loss_of_batch(step)`` returns the loss of that step's batch."""
    torch.manual_seed(0)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=rate)
    for step in range(steps):
        optimiser.zero_grad()
        loss_of_batch(step).backward()
        optimiser.step()
    return model.eval()


def trained_classifier(corpora: Path) -> torch.nn.Module:
    from data_prep.mnist import read_idx

    images = read_idx(corpora / "mnist" / "train-images-idx3-ubyte.gz")
    labels = read_idx(corpora / "mnist" / "train-labels-idx1-ubyte.gz")
    images = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255
    labels = torch.tensor(labels, dtype=torch.long)
    model = tiny_classifier()

    def loss(step: int) -> torch.Tensor:
        part = torch.arange(step * BATCH, (step + 1) * BATCH) % len(labels)  # epochs of the slice
        return torch.nn.functional.cross_entropy(model(images[part]), labels[part])

    return fit(model, loss, CLASSIFIER_STEPS)


def trained_char_lm(corpora: Path) -> tuple[torch.nn.Module, list[str]]:
    model, symbols = tiny_char_lm(corpora)
    index = {symbol: i for i, symbol in enumerate(symbols)}
    text = (corpora / "ptb_char" / "ptb.char.valid.txt").read_text()[:5000]
    ids = [index[s] for line in text.splitlines() for s in [*line.split(), "\n"]]
    length = 64
    windows = torch.tensor([ids[i : i + length + 1] for i in range(0, len(ids) - length, length)])

    def loss(step: int) -> torch.Tensor:
        batch = windows[torch.arange(step * 8, step * 8 + 8) % len(windows)]
        logits, _ = model(batch[:, :-1])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())

    return fit(model, loss), symbols


def short_pairs(corpora: Path) -> tuple[list[str], list[str]]:
    """The first few short Multi30k training pairs (English, German)."""
    pairs = zip(
        multi30k_lines(corpora, "train", "en", CORPUS_LINES),
        multi30k_lines(corpora, "train", "de", CORPUS_LINES),
        strict=True,
    )
    short = [pair for pair in pairs if max(map(len, pair)) <= SHORT_CHARS][:TRANSLATION_PAIRS]
    return [english for english, _ in short], [german for _, german in short]


def trained_translation_model(corpora: Path, wordpieces) -> torch.nn.Module:
    """Fitted to a few Multi30k pairs (a tiny model learns little else in seconds), so the
    page shows a German sentence for them."""
    english, german = short_pairs(corpora)
    src_ids, src_lengths = pad_sources(wordpieces.encode_batch(english))
    targets = [torch.tensor([BOS_ID, *ids, EOS_ID]) for ids in wordpieces.encode_batch(german)]
    padded = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=PAD_ID)
    model = tiny_translation_model()

    def loss(step: int) -> torch.Tensor:
        logits = model(src_ids, src_lengths, padded[:, :-1])
        return torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), padded[:, 1:].flatten(), ignore_index=PAD_ID
        )

    return fit(model, loss, TRANSLATION_STEPS, TRANSLATION_LEARNING_RATE)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, corpora) -> dict[str, Path]:
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("web-bundles")
    wordpieces = train_wordpieces(corpora)
    lm, symbols = trained_char_lm(corpora)
    return {
        "translate": write_bundle(
            directory / "en-de",
            task="translation",
            model=trained_translation_model(corpora, wordpieces),
            wordpieces=wordpieces.model_bytes,
            decoding=TEST_DECODING,
        ),
        "classify": write_bundle(
            directory / "mnist", task="classify", model=trained_classifier(corpora)
        ),
        "lm": write_bundle(directory / "ptb", task="char_lm", model=lm, vocabulary=symbols),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory, bundles):
    args = [item for task, path in bundles.items() for item in (f"--{task}", str(path))]
    with running_server(tmp_path_factory.mktemp("web-serve"), args, bundles) as running:
        yield running


# ----------------------------------------------------------------------------- no browser


def test_page_and_its_files_come_from_the_package(server):
    page = server.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/static/app.js"' in page.text and "Continue text" in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        asset = server.get(f"/static/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"], name
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    assert "/lm/scalings" in server.get("/models").json()["models"]["char_lm"]["endpoints"]


def test_scalings_are_the_layers_own(server):
    """/lm/scalings against the layer's weight_scalings run here on text, end of line, text."""
    text = "the cat"
    answer = server.post("/lm/scalings", {"text": text, "units": 5})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    bundle = load_bundle(server.bundles["lm"])
    index = {symbol: i for i, symbol in enumerate(bundle.vocabulary.symbols)}
    ids = [index["_" if c == " " else c] for c in text]
    warm_up = [*ids, index["\n"]]
    inputs = bundle.model.embedding(torch.tensor([warm_up + ids]))
    expected = bundle.model.rnn.layers[0].weight_scalings(inputs)
    hidden = bundle.model.config.recurrent.hidden_size
    assert body["characters"] == list(text) and body["gates"] == ["i", "f", "o", "g"]
    assert body["hidden_size"] == hidden
    for name in ("d_h", "d_x"):
        values = expected[name][0, len(warm_up) :]  # (T, 4H)
        assert len(body[name]) == 4 and all(len(gate) == 5 for gate in body[name])
        for gate, unit, t in itertools.product(range(4), range(5), range(len(text))):
            assert body[name][gate][unit][t] == pytest.approx(
                values[t, gate * hidden + unit].item(), rel=1e-5, abs=1e-6
            )
    refused = {
        "unknown-char": ({"text": "caf\u00e9"}, "'\u00e9' is not in"),
        "layer-too-high": ({"text": "the", "layer": 5}, "layer"),
        "units-too-many": ({"text": "the", "units": 1000}, "units"),
        "blank": ({"text": "  "}, "blank"),
    }
    for case, (request, words) in refused.items():
        answer = server.post("/lm/scalings", request)
        assert answer.status_code == 422 and words in answer.json()["detail"], (case, answer.text)


# ----------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium package (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the server; fails the test on any uncaught JavaScript error."""
    context = browser.new_context(viewport=DESKTOP)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.goto(server.url + "/")
    opened.wait_for_selector("#models-out h3")  # /models has been read
    yield opened
    context.close()
    assert not errors, errors


def post_json(server, path: str, body: dict) -> requests.Response:
    return requests.post(server.url + path, json=body, timeout=60)


@pytest.mark.browser
def test_translate_a_sentence(page, server, tmp_path, corpora):
    sentence = short_pairs(corpora)[0][0]
    page.fill("#translate-text", sentence)
    page.fill("#translate-nbest", "2")
    page.click("#translate button[type=submit]")
    best = page.locator("#translate-out li .best").first
    best.wait_for(timeout=ANSWER_MS)
    expected = post_json(server, "/translate", {"text": [sentence], "nbest": 2}).json()
    translation = expected["translations"][0]
    assert best.inner_text() == translation["text"]  # shown as it is (white-space: pre-wrap)
    rows = page.locator("#translate-out li tbody tr")
    assert rows.count() == 2
    assert rows.nth(1).locator("td").nth(1).inner_text() == translation["nbest"][1]["text"]
    assert page.locator("#translate .status").inner_text() == ""
    page.locator("#translate").screenshot(path=tmp_path / "translate.png")


@pytest.mark.browser
def test_draw_a_digit_and_see_ten_probabilities(page, server, tmp_path):
    sent: list[dict] = []
    page.on(
        "request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/classify") else None
    )
    box = page.locator("#digit-canvas").bounding_box()
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    page.mouse.move(x + 0.5 * w, y + 0.2 * h)
    page.mouse.down()
    for step in range(1, 11):  # a vertical stroke: a "1"
        page.mouse.move(x + 0.5 * w, y + (0.2 + 0.06 * step) * h)
    page.mouse.up()
    bars = page.locator("#digit-bars li")
    bars.nth(9).wait_for(timeout=ANSWER_MS)
    assert bars.count() == 10
    shown = [float(bars.nth(k).get_attribute("data-probability")) for k in range(10)]
    assert math.fsum(shown) == pytest.approx(1.0, abs=1e-5)
    # the page sent the drawing it shows, and shows what the server answers for it
    pixels = sent[-1]["pixels"]
    assert len(pixels) == 28 and all(len(row) == 28 for row in pixels)
    assert max(map(max, pixels)) == 255 and min(map(min, pixels)) == 0
    answer = post_json(server, "/classify", {"pixels": pixels}).json()
    assert shown == pytest.approx(answer["probabilities"], abs=1e-9)
    assert f"Most likely {answer['digit']}" in page.inner_text("#digit-answer")
    page.locator("#digit").screenshot(path=tmp_path / "digit.png")

    page.click("#digit-clear")
    assert bars.count() == 0
    page.focus("#digit-canvas")  # the keyboard draws too
    for key in ["ArrowUp"] * 6 + ["ArrowRight"] * 4:
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    bars.nth(9).wait_for(timeout=ANSWER_MS)
    ink = sent[-1]["pixels"]
    assert sum(value > 0 for row in ink for value in row) >= 10


@pytest.mark.browser
def test_continue_a_prefix_and_see_the_scalings(page, server, tmp_path):
    prefix = "the company said"
    page.fill("#lm-prefix", prefix)
    page.fill("#lm-length", "40")
    page.fill("#lm-temperature", "0.5")
    page.fill("#lm-seed", "3")
    page.click("#lm button[type=submit]")
    added = page.locator("#lm-out .added")
    added.wait_for(timeout=ANSWER_MS)
    expected = post_json(
        server, "/lm/generate", {"prefix": prefix, "length": 40, "temperature": 0.5, "seed": 3}
    ).json()
    assert added.text_content() == expected["text"]
    bits = post_json(server, "/lm/score", {"text": prefix}).json()["bits_per_character"]
    page.wait_for_function("document.querySelector('#lm-score').textContent.length > 0")
    assert f"{bits:.3f} bits per character" in page.inner_text("#lm-score")
    canvas = page.locator("#scalings-canvas")
    page.wait_for_selector("#scalings:not([hidden])", timeout=ANSWER_MS)
    assert canvas.get_attribute("data-columns") == str(len(prefix))
    assert canvas.get_attribute("data-rows") == str(8 * 16)  # d_h and d_x, 4 gates, 16 units
    coloured = page.evaluate(
        """() => {
          const c = document.querySelector('#scalings-canvas');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let n = 0;
          for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - d[i + 2]) > 40) n++;
          return n;
        }"""
    )
    assert coloured > 100  # red and blue cells, not a blank canvas
    page.locator("#lm").screenshot(path=tmp_path / "continue.png")

    page.type("#lm-prefix", " it")  # typing redraws the heat map for the longer text
    page.wait_for_function(
        f"document.querySelector('#scalings-canvas').dataset.columns === '{len(prefix) + 3}'",
        timeout=ANSWER_MS,
    )


@pytest.mark.browser
def test_a_text_over_the_limit_shows_the_servers_message(page, server, tmp_path):
    limit = server.get("/models").json()["limits"]["max_text_chars"]
    text = "a" * (limit + 1)
    page.fill("#translate-text", text)
    assert "over" in page.get_attribute("#translate-count", "class")
    page.click("#translate button[type=submit]")
    status = page.locator("#translate .status.error")
    status.wait_for(timeout=ANSWER_MS)
    answer = post_json(server, "/translate", {"text": [text]})
    assert answer.status_code == 422
    assert answer.json()["detail"] in status.inner_text() and "422" in status.inner_text()
    page.locator("#translate").screenshot(path=tmp_path / "translate-error.png")


@pytest.mark.browser
def test_the_api_key_is_sent_and_a_401_is_explained(page):
    page.fill("#api-key", "s3cret")
    page.route(
        "**/lm/score",
        lambda route: route.fulfill(
            status=401, content_type="application/json", body='{"detail": "Invalid API key"}'
        ),
    )
    with page.expect_request("**/lm/score", timeout=ANSWER_MS) as request:
        page.fill("#lm-prefix", "the")
    headers = request.value.all_headers()
    assert headers["authorization"] == "Bearer s3cret" and headers["x-api-key"] == "s3cret"
    status = page.locator("#lm .status.error")
    status.wait_for(timeout=ANSWER_MS)
    words = status.inner_text()
    assert "401" in words and "Invalid API key" in words and "API key" in words


@pytest.mark.browser
def test_a_missing_model_is_said_and_the_page_fits_a_phone(browser, bundles, tmp_path):
    with running_server(tmp_path, ["--classify", str(bundles["classify"])], bundles) as alone:
        context = browser.new_context(viewport=PHONE)
        page = context.new_page()
        page.goto(alone.url + "/")
        page.wait_for_selector("#models-out h3")
        assert page.locator("#translate .not-loaded").is_visible()
        assert page.locator("#lm .not-loaded").is_visible()
        assert not page.locator("#digit .not-loaded").is_visible()
        assert not page.locator("#translate-text").is_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], width  # nothing wider than the phone
        for control in page.locator("input, textarea, canvas").all():
            if control.is_visible():  # every visible control has a label or a name
                name = control.get_attribute("id")
                labelled = page.locator(f"label[for='{name}']").count() or control.get_attribute(
                    "aria-label"
                )
                assert labelled, name
        page.screenshot(path=tmp_path / "phone.png", full_page=True)
        context.close()


@pytest.mark.browser
def test_the_whole_page_in_use(page, corpora, tmp_path):
    """Every panel answered at once (docs/web-page.png is this test's page.png)."""
    page.fill("#translate-text", short_pairs(corpora)[0][0])
    page.fill("#translate-nbest", "2")
    page.click("#translate button[type=submit]")
    box = page.locator("#digit-canvas").bounding_box()
    corners = [(0.3, 0.25), (0.7, 0.25), (0.45, 0.8)]  # a "7"
    page.mouse.move(
        box["x"] + corners[0][0] * box["width"], box["y"] + corners[0][1] * box["height"]
    )
    page.mouse.down()
    for fx, fy in corners[1:]:
        page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=8)
    page.mouse.up()
    page.fill("#lm-prefix", "the company said")
    page.fill("#lm-seed", "1")
    page.click("#lm button[type=submit]")
    for selector in (
        "#translate-out li",
        "#digit-bars li",
        "#lm-out .added",
        "#scalings-canvas[data-columns]",
    ):
        page.locator(selector).first.wait_for(timeout=ANSWER_MS)
    for panel in ("translate", "digit", "lm"):
        assert page.locator(f"#{panel} .status").inner_text() == "", panel
    page.screenshot(path=tmp_path / "page-full.png", full_page=True)
    panels_end = page.locator("#models").bounding_box()["y"]  # the panels, without the listing
    clip = {"x": 0, "y": 0, "width": DESKTOP["width"], "height": panels_end}
    page.screenshot(path=tmp_path / "page.png", clip=clip, full_page=True)


@pytest.mark.browser
def test_documents_and_alignments_as_the_server_answers_them(page, server):
    """The page sends sentences with alignment, then a document, and shows what the server
    answers: the alignment grid follows the sentence under the cursor; the document keeps its
    line breaks."""
    import json

    page.wait_for_selector("#translate-alignment:enabled")  # the server's schema offers both
    page.wait_for_selector("#translate-document:enabled")
    sent: list[dict] = []
    page.on(
        "request",
        lambda request: (
            sent.append(json.loads(request.post_data))
            if request.url.endswith("/translate")
            else None
        ),
    )
    text = "A dog.\nTwo cats sleep."
    page.fill("#translate-text", text)
    page.check("#translate-alignment")
    page.click("#translate button[type=submit]")
    page.wait_for_selector("#alignment:not([hidden])", timeout=ANSWER_MS)
    assert sent[-1] == {"text": ["A dog.", "Two cats sleep."], "alignment": True}
    expected = post_json(server, "/translate", sent[-1]).json()["translations"]

    def grid_shows(translation: dict) -> None:
        pairs = {tuple(pair) for pair in translation["alignment"]}
        assert page.locator("#alignment-grid td.on").count() == len(pairs)
        rows = page.locator("#alignment-grid tbody th").all_inner_texts()
        assert rows == [token.strip() for token in translation["source_tokens"]]

    page.focus("#translate-text")
    page.keyboard.press("Control+End")  # the cursor on the second sentence
    page.keyboard.press("ArrowLeft")
    grid_shows(expected[1])
    page.keyboard.press("Control+Home")
    grid_shows(expected[0])

    page.check("#translate-document")
    page.click("#translate button[type=submit]")
    page.wait_for_selector("#translate-document-out:not([hidden])", timeout=ANSWER_MS)
    assert sent[-1] == {"document": text, "alignment": True}
    answer = post_json(server, "/translate", sent[-1]).json()
    assert "\n" in answer["document"]
    assert page.inner_text("#translate-document-out") == answer["document"]
    assert page.locator("#translate-out li").count() == 2
    page.locator("#translate-out li").nth(1).focus()  # a sentence picked in the list
    grid_shows(answer["translations"][1])
