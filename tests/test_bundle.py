"""Bundles: export from a checkpoint, load without Lightning or pickle, refuse tampering.

Models are tiny and untrained (a few thousand parameters); the wordpieces are trained on a
slice of the real Multi30k training text. Checkpoints are written in the training tasks'
format (``checkpoint["hypernmt"]`` plus the model's weights under ``model.``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    TEST_DECODING,
    multi30k_lines,
    tiny_char_lm,
    tiny_classifier,
    tiny_translation_model,
    train_wordpieces,
)

from nmt.bundle import (
    CONFIG,
    MANIFEST_NAME,
    WEIGHTS,
    export_checkpoint,
    load_bundle,
    read_manifest,
    write_bundle,
)
from nmt.checkpoints import hypernmt_metadata, load_translation
from nmt.cli import main as nmt_main
from nmt.decoding import DecodingOptions, translate_texts
from nmt.errors import UserError
from nmt.models.translation import TranslationConfig
from nmt.special_tokens import BOS_ID, EOS_ID, PAD_ID
from nmt.wordpieces import Wordpieces

# ----------------------------------------------------------------------------- tiny models


def save_checkpoint(path: Path, model: torch.nn.Module, metadata: dict) -> Path:
    """A checkpoint as the training tasks write it (Lightning's layout, plain torch.save)."""
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    torch.save({"state_dict": state, "hypernmt": metadata, "global_step": 3}, path)
    return path


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file: tensor names, dtypes and shapes (no pickle)."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size])


@pytest.fixture(scope="module")
def wordpieces(corpora: Path) -> Wordpieces:
    return train_wordpieces(corpora)


@pytest.fixture(scope="module")
def translation_checkpoint(tmp_path_factory, wordpieces: Wordpieces) -> Path:
    model = tiny_translation_model()
    metadata = hypernmt_metadata(
        "translation", model.config.to_dict(), wordpieces=wordpieces.model_bytes
    )
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", model, metadata)


@pytest.fixture(scope="module")
def translation_bundle(tmp_path_factory, translation_checkpoint: Path) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "en-de"
    assert nmt_main(["export", str(translation_checkpoint), str(out), "--beam-size", "3"]) == 0
    return out


def translate(model, wordpieces, texts, options=TEST_DECODING) -> list[list[tuple]]:
    found = translate_texts(model, wordpieces, texts, options, batch_size=8)
    return [[(wordpieces.decode(h.tokens), h.score) for h in hyps] for hyps in found]


# ----------------------------------------------------------------------------- export and load


def test_bundle_translates_as_the_checkpoint(translation_checkpoint, translation_bundle, corpora):
    texts = multi30k_lines(corpora, "test_2016_flickr", "en", 6)
    model, wordpieces = load_translation(translation_checkpoint)
    bundle = load_bundle(translation_bundle)
    assert bundle.task == "translation"
    assert bundle.decoding.beam_size == 3  # the export option became the bundle's default
    assert bundle.wordpieces.model_bytes == wordpieces.model_bytes
    options = DecodingOptions(beam_size=3, nbest=2, max_length=12)
    assert translate(bundle.model, bundle.wordpieces, texts, options) == translate(
        model, wordpieces, texts, options
    )
    for key, value in model.state_dict().items():
        assert torch.equal(bundle.model.state_dict()[key], value), key


def test_bundle_written_before_the_config_renames_still_loads() -> None:
    from helpers import BEFORE_RENAMES, before_renames_input, before_renames_logits

    bundle = load_bundle(BEFORE_RENAMES / "translation-bundle")
    with torch.no_grad():
        logits = bundle.model(*before_renames_input())[0, :, :6]
    torch.testing.assert_close(logits, before_renames_logits("bundle"), atol=1e-5, rtol=0)


def test_manifest_records_files_task_and_versions(translation_bundle, translation_checkpoint):
    manifest = read_manifest(translation_bundle)
    assert manifest["task"] == "translation" and manifest["quantize"] is None
    assert set(manifest["files"]) == {CONFIG, WEIGHTS, "wordpieces.model", "decoding.json"}
    assert {p.name for p in translation_bundle.iterdir()} == {*manifest["files"], MANIFEST_NAME}
    assert manifest["packages"]["torch"] == torch.__version__
    assert manifest["source"]["checkpoint"] == translation_checkpoint.name
    config = json.loads((translation_bundle / CONFIG).read_text())
    assert TranslationConfig.from_dict(config) == tiny_translation_model().config
    header = safetensors_header(translation_bundle / WEIGHTS)
    names = set(tiny_translation_model().state_dict())
    assert set(header) - {"__metadata__"} <= names
    assert len(header) - 1 == len(names) - 1  # every tensor once; the tied output weight shared


def test_loading_needs_neither_lightning_nor_pickle(translation_bundle):
    """In a fresh interpreter with pickle disabled, load and use the bundle."""
    script = f"""
import pickle, sys
import torch
torch.set_num_threads(1)
def refuse(*args, **kwargs):
    raise AssertionError("a bundle must load without unpickling")
pickle.load = pickle.loads = torch.load = refuse
from nmt.bundle import load_bundle
from nmt.decoding import translate_texts
bundle = load_bundle({str(translation_bundle)!r})
translate_texts(bundle.model, bundle.wordpieces, ["A dog runs."], bundle.decoding, batch_size=1)
assert not any(name.split(".")[0] in ("lightning", "pytorch_lightning") for name in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_classify_and_char_lm_round_trip(tmp_path, corpora):
    classifier = tiny_classifier()
    checkpoint = save_checkpoint(
        tmp_path / "mnist.ckpt",
        classifier,
        {"task": "classify", "model_config": classifier.config.to_dict()},
    )
    bundle = load_bundle(export_checkpoint(checkpoint, tmp_path / "mnist"))
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(bundle.model(images), classifier(images))

    lm, symbols = tiny_char_lm(corpora)
    checkpoint = save_checkpoint(
        tmp_path / "lm.ckpt",
        lm,
        {"task": "char_lm", "model_config": lm.config.to_dict(), "vocabulary": symbols},
    )
    bundle = load_bundle(export_checkpoint(checkpoint, tmp_path / "lm"))
    assert bundle.vocabulary.symbols == symbols
    ids = torch.randint(4, len(symbols), (2, 30))
    with torch.no_grad():
        assert torch.equal(bundle.model(ids)[0], lm(ids)[0])


# ----------------------------------------------------------------------------- int8


def test_int8_bundle_stores_int8_linears_and_stays_close(tmp_path, wordpieces, corpora):
    model = tiny_translation_model()
    float_dir = write_bundle(
        tmp_path / "f", task="translation", model=model, wordpieces=wordpieces.model_bytes
    )
    int8_dir = write_bundle(
        tmp_path / "q",
        task="translation",
        model=model,
        wordpieces=wordpieces.model_bytes,
        quantize="int8",
    )
    assert read_manifest(int8_dir)["quantize"] == "int8"
    stored = safetensors_header(int8_dir / WEIGHTS)
    for linear in ("output", "pre_output", "attention.query"):
        assert stored[f"{linear}.weight_int8"]["dtype"] == "I8"
        assert f"{linear}.weight" not in stored
    at_export = load_bundle(int8_dir).model
    at_load = load_bundle(float_dir, quantize="int8").model
    assert isinstance(at_export.pre_output, torch.ao.nn.quantized.dynamic.Linear)

    texts = multi30k_lines(corpora, "test_2016_flickr", "en", 4)
    src = [wordpieces.encode(text) + [EOS_ID] for text in texts]
    width = max(map(len, src))
    src_ids = torch.tensor([ids + [PAD_ID] * (width - len(ids)) for ids in src])
    lengths = torch.tensor([len(ids) for ids in src])
    tgt_in = torch.full((len(texts), 5), BOS_ID)
    with torch.no_grad():
        reference = torch.log_softmax(model(src_ids, lengths, tgt_in), -1)
        exported = torch.log_softmax(at_export(src_ids, lengths, tgt_in), -1)
        loaded = torch.log_softmax(at_load(src_ids, lengths, tgt_in), -1)
    assert torch.equal(exported, loaded)  # quantised at export == quantised at load
    # int8 linears and int8 HyperLSTM step products (7-bit activations in fbgemm)
    assert (exported - reference).abs().max() < 0.2
    assert not torch.equal(exported, reference)


# ----------------------------------------------------------------------------- refusals


@pytest.fixture
def bundle_copy(tmp_path, translation_bundle) -> Path:
    import shutil

    return Path(shutil.copytree(translation_bundle, tmp_path / "copy"))


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: flip_last_byte(b / WEIGHTS), "model.safetensors: sha256 does not match"),
        (lambda b: flip_last_byte(b / "wordpieces.model"), "wordpieces.model: sha256 does not"),
        (lambda b: (b / CONFIG).write_text('{"vocab_size": 9}'), "config.json: sha256 does not"),
        (lambda b: (b / "decoding.json").unlink(), "decoding.json: missing"),
        (lambda b: (b / MANIFEST_NAME).unlink(), "manifest.json: missing"),
        (lambda b: (b / MANIFEST_NAME).write_text("{not json"), "manifest.json: not valid JSON"),
        (lambda b: (b / "extra.py").write_text("import os"), "extra.py: not listed"),
        (lambda b: _edit_manifest(b, task="summarise"), "unknown task 'summarise'"),
        (lambda b: _edit_manifest(b, drop=WEIGHTS), "lacks 'model.safetensors'"),
    ],
    ids=[
        "weights",
        "wordpieces",
        "config",
        "missing-file",
        "no-manifest",
        "bad-manifest",
        "extra-file",
        "task",
        "unlisted-weights",
    ],
)
def test_damaged_bundles_are_refused(bundle_copy, damage, message):
    damage(bundle_copy)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_bundle(bundle_copy)


def _edit_manifest(bundle: Path, task: str | None = None, drop: str | None = None) -> None:
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    if task is not None:
        manifest["task"] = task
    if drop is not None:
        del manifest["files"][drop]
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch, translation_checkpoint, capsys):
    import nmt.bundle

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(nmt.bundle, "_save_weights", fail)
    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(translation_checkpoint, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its temporary directory

    (tmp_path / "exists").mkdir()
    assert nmt_main(["export", str(translation_checkpoint), str(tmp_path / "exists")]) == 2
    assert "already exists" in capsys.readouterr().err
