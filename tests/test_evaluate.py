"""`nmt evaluate`, `nmt translate` and `nmt average` on a tiny model trained for a few steps.

The model is a real TranslationModel trained with plain PyTorch on the first lines of the real
Multi30k training file (wordpieces prepared by `nmt prep translation`), saved in the layout of a
training checkpoint. BLEU and chrF are checked against sacreBLEU's own command line run on the
hypothesis file that `nmt evaluate` wrote.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from helpers import greedy_reference  # noqa: E402

from nmt.checkpoints import hypernmt_metadata, load_translation  # noqa: E402
from nmt.cli import main as nmt_main  # noqa: E402
from nmt.corpus import PreparedCorpus  # noqa: E402
from nmt.decoding import DecodingOptions, beam_search, translate_texts  # noqa: E402
from nmt.decoding.batching import pad_sources  # noqa: E402
from nmt.models.translation import (  # noqa: E402
    TranslationConfig,
    TranslationModel,
    label_smoothed_loss,
)
from nmt.modules.recurrent import RecurrentConfig  # noqa: E402
from nmt.special_tokens import BOS_ID, EOS_ID, PAD_ID  # noqa: E402

TRAIN_LINES, TEST_LINES = 600, 30
TRAIN_STEPS, TRAIN_BATCH = 50, 24
LABEL_SMOOTHING = 0.1  # the training task's default


def real_lines(corpora: Path, split: str, lang: str, count: int) -> list[str]:
    with gzip.open(corpora / "multi30k" / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(count)]


@pytest.fixture(scope="module")
def files(corpora: Path, tmp_path_factory) -> dict[str, Path]:
    """Slices of the real Multi30k files: train.{en,de} and test.{en,de} (test gzipped)."""
    directory = tmp_path_factory.mktemp("multi30k")
    paths = {}
    for name, split, count, suffix in (
        ("train", "train", TRAIN_LINES, ""),
        ("test", "test_2016_flickr", TEST_LINES, ".gz"),
    ):
        for lang in ("en", "de"):
            path = directory / f"{name}.{lang}{suffix}"
            data = "".join(f"{line}\n" for line in real_lines(corpora, split, lang, count))
            path.write_bytes(gzip.compress(data.encode()) if suffix else data.encode())
            paths[f"{name}.{lang}"] = path
    return paths


@pytest.fixture(scope="module")
def corpus_dir(files, tmp_path_factory) -> Path:
    from data_prep import parallel_corpus

    out = tmp_path_factory.mktemp("prepared") / "tiny.en-de"
    split = "{}={},{}".format
    code = parallel_corpus.main(
        ["--corpus", "files", "--src", "en", "--tgt", "de", "--vocab-size", "1000"]
        + ["--num-proc", "1", "--out", str(out)]
        + ["--split", split("train", files["train.en"], files["train.de"])]
        + ["--split", split("test_2016_flickr", files["test.en"], files["test.de"])]
    )
    assert code == 0
    return out


def pad(rows: list[list[int]]) -> torch.Tensor:
    width = max(map(len, rows))
    return torch.tensor([row + [PAD_ID] * (width - len(row)) for row in rows])


def train_tiny_model(corpus: PreparedCorpus, steps: int, seed: int = 0) -> TranslationModel:
    torch.manual_seed(seed)
    config = TranslationConfig(
        vocab_size=corpus.wordpieces.vocab_size,
        embedding_size=24,
        encoder_layers=1,
        decoder_layers=2,
        recurrent=RecurrentConfig(cell="lstm", hidden_size=32),
        dropout=0.0,
    )
    model = TranslationModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train = corpus.split("train")
    sources, targets = list(train["src_ids"]), list(train["tgt_ids"])
    for step in range(steps):
        batch = [(step * TRAIN_BATCH + i) % len(sources) for i in range(TRAIN_BATCH)]
        src = [list(sources[i]) + [EOS_ID] for i in batch]
        logits = model(
            pad(src),
            torch.tensor([len(s) for s in src]),
            pad([[BOS_ID, *targets[i]] for i in batch]),
        )
        loss, _, count = label_smoothed_loss(
            logits, pad([[*targets[i], EOS_ID] for i in batch]), LABEL_SMOOTHING
        )
        optimizer.zero_grad()
        (loss / count).backward()
        optimizer.step()
    return model.eval()


def save_checkpoint(model: TranslationModel, wordpieces, path: Path, step: int) -> Path:
    """The layout the training task writes (see nmt/checkpoints.py)."""
    torch.save(
        {
            "global_step": step,
            "epoch": 0,
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "optimizer_states": [{"step": step}],
            "hypernmt": hypernmt_metadata(
                "translation", model.config.to_dict(), wordpieces=wordpieces.model_bytes
            ),
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def checkpoint(corpus_dir, tmp_path_factory) -> Path:
    corpus = PreparedCorpus(corpus_dir)
    model = train_tiny_model(corpus, TRAIN_STEPS)
    path = tmp_path_factory.mktemp("run") / "last.ckpt"
    return save_checkpoint(model, corpus.wordpieces, path, TRAIN_STEPS)


def sacrebleu_cli(reference: Path, hypotheses: Path) -> dict[str, tuple[str, float]]:
    """{metric: (signature, score)} from sacreBLEU's command line, 4 decimals."""
    output = subprocess.run(
        [sys.executable, "-m", "sacrebleu", str(reference), "-i", str(hypotheses)]
        + ["-m", "bleu", "chrf", "-f", "text", "-w", "4"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for line in output.splitlines():
        name_signature, score = re.match(r"\s*(\S+) = ([\d.]+)", line).groups()
        name, signature = name_signature.split("|", 1)
        found[name] = (signature, float(score))
    return found


def run_nmt(capsys, *argv) -> tuple[int, str, str]:
    code = nmt_main([*map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def evaluate_and_compare(capsys, checkpoint, data, name, reference, out_dir) -> dict:
    """Run `nmt evaluate`; check its scores against sacreBLEU's CLI on the written file."""
    code, out, _ = run_nmt(
        capsys, "evaluate", "--checkpoint", checkpoint, *data, "--beam-size", 3,
        "--batch-size", 7, "--max-length", 40, "--out-dir", out_dir, "--no-progress",
    )  # fmt: skip
    assert code == 0
    hypothesis_file = out_dir / f"{name}.hyp"
    report = json.loads((out_dir / f"{name}.json").read_text())
    assert len(hypothesis_file.read_text(encoding="utf-8").splitlines()) == TEST_LINES

    cli = sacrebleu_cli(reference, hypothesis_file)
    assert (report["bleu"]["signature"], round(report["bleu"]["score"], 4)) == cli["BLEU"]
    assert (report["chrf"]["signature"], round(report["chrf"]["score"], 4)) == cli["chrF2"]
    printed = dict(re.findall(r"^(BLEU|chrF2)\|\S+ = ([\d.]+)", out, flags=re.MULTILINE))
    assert float(printed["BLEU"]) == pytest.approx(cli["BLEU"][1], abs=0.005)
    assert float(printed["chrF2"]) == pytest.approx(cli["chrF2"][1], abs=0.005)

    assert report["model"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert report["decoding"] == DecodingOptions(beam_size=3, max_length=40).to_dict()
    assert report["test_set"]["sentences"] == TEST_LINES
    assert report["seconds"] > 0 and report["sentences_per_second"] > 0
    return report


@pytest.mark.parametrize("test_set", ["corpus", "files"])
def test_evaluate_scores_equal_sacrebleu_cli(
    test_set, checkpoint, corpus_dir, files, tmp_path, capsys
):
    data = (
        ["--corpus", corpus_dir, "--split", "test_2016_flickr"]
        if test_set == "corpus"
        else ["--source", files["test.en"], "--reference", files["test.de"]]
    )
    name = "test_2016_flickr" if test_set == "corpus" else "test.en"
    reference = tmp_path / "reference.de"  # the raw file, as a user would score against it
    reference.write_bytes(gzip.decompress(files["test.de"].read_bytes()))
    report = evaluate_and_compare(capsys, checkpoint, data, name, reference, tmp_path)
    assert report["bleu"]["score"] > 0  # 50 steps teach it a few words ("Ein", "eine", ...)


def test_translate_file_stdin_and_nbest(checkpoint, files, tmp_path, capsys, monkeypatch):
    source = tmp_path / "test.en"
    source.write_bytes(gzip.decompress(files["test.en"].read_bytes()))
    code, _, _ = run_nmt(
        capsys, "translate", "--checkpoint", checkpoint, "--input", source, "--output",
        tmp_path / "out.de", "--beam-size", 3, "--no-progress",
    )  # fmt: skip
    assert code == 0
    written = (tmp_path / "out.de").read_text(encoding="utf-8").splitlines()

    model, wordpieces = load_translation(checkpoint)
    lines = source.read_text(encoding="utf-8").splitlines()
    expected = translate_texts(model, wordpieces, lines, DecodingOptions(beam_size=3), 64)
    assert written == [wordpieces.decode(h[0].tokens) for h in expected]

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(source.read_bytes())))
    code, out, _ = run_nmt(capsys, "translate", "--checkpoint", checkpoint, "--nbest", 2)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]  # the server's Translation fields
    nbest = [record["nbest"] for record in records]
    assert len(nbest) == TEST_LINES and all(len(entry) == 2 for entry in nbest)
    assert all(entry[0]["score"] >= entry[1]["score"] for entry in nbest)
    assert [record["text"] for record in records] == [entry[0]["text"] for entry in nbest]


def test_bad_input_is_a_one_line_error(checkpoint, files, tmp_path, capsys):
    short = tmp_path / "short.de"
    short.write_text("Ein Hund.\n", encoding="utf-8")
    code, _, err = run_nmt(
        capsys, "evaluate", "--checkpoint", checkpoint, "--source", files["test.en"],
        "--reference", short, "--out-dir", tmp_path,
    )  # fmt: skip
    assert code == 2 and str(short) in err and str(files["test.en"]) in err
    broken = tmp_path / "broken.en"
    broken.write_bytes(b"A dog.\nA \xff cat.\n")
    code, _, err = run_nmt(capsys, "translate", "--checkpoint", checkpoint, "--input", broken)
    assert code == 2 and f"{broken}:2: not UTF-8" in err
    code, _, err = run_nmt(capsys, "translate", "--checkpoint", tmp_path / "missing.ckpt")
    assert code == 2 and "missing.ckpt" in err
    code, _, err = run_nmt(
        capsys, "translate", "--checkpoint", checkpoint, "--nbest", 3, "--beam-size", 2
    )
    assert code == 2 and "nbest" in err


def test_trained_model_beam_one_is_greedy_and_batch_invariant(checkpoint, files):
    model, wordpieces = load_translation(checkpoint)
    lines = gzip.decompress(files["test.en"].read_bytes()).decode().splitlines()[:12]
    sources = [wordpieces.encode(line) for line in lines]
    for beam_size in (1, 4):
        options = DecodingOptions(beam_size=beam_size, nbest=beam_size, max_length=40)
        alone = [beam_search(model, *pad_sources([s]), options)[0] for s in sources]
        together = beam_search(model, *pad_sources(sources), options)  # lengths mixed
        for one, batched in zip(alone, together, strict=True):
            assert [h.tokens for h in batched] == [h.tokens for h in one]
            assert [h.score for h in batched] == pytest.approx([h.score for h in one], abs=1e-4)
    options = DecodingOptions(beam_size=1, alpha=0.6, max_length=40)
    for source in sources:
        found = beam_search(model, *pad_sources([source]), options)[0][0].tokens
        assert found == greedy_reference(model, source, min_length=1, max_tokens=40)


def test_average_last_checkpoints(corpus_dir, tmp_path, capsys):
    corpus = PreparedCorpus(corpus_dir)
    run = tmp_path / "checkpoints"
    run.mkdir()
    models = [train_tiny_model(corpus, steps=1, seed=seed) for seed in range(3)]
    for step, model in enumerate(models, start=1):
        save_checkpoint(model, corpus.wordpieces, run / f"step{step}.ckpt", step)
    save_checkpoint(models[2], corpus.wordpieces, run / "last.ckpt", 3)  # twin of step 3
    out = tmp_path / "averaged.ckpt"
    code, stdout, _ = run_nmt(capsys, "average", run, "--last", 2, "--out", out)
    assert code == 0 and "steps 2, 3" in stdout

    averaged = torch.load(out, weights_only=False)
    assert averaged["global_step"] == 3 and averaged["optimizer_states"] == [{"step": 3}]
    weights = [m.state_dict() for m in models]
    for key, value in averaged["state_dict"].items():
        expected = (
            weights[1][key.removeprefix("model.")] + weights[2][key.removeprefix("model.")]
        ) / 2
        assert torch.allclose(value, expected, atol=1e-7), key
    tied = (
        averaged["state_dict"]["model.output.weight"],
        averaged["state_dict"]["model.tgt_embedding.weight"],
    )
    assert tied[0].data_ptr() == tied[1].data_ptr()  # tied embeddings stay one tensor
    model, _ = load_translation(out)  # loads like any checkpoint
    assert torch.equal(model.output.bias, averaged["state_dict"]["model.output.bias"])

    code, _, err = run_nmt(capsys, "average", run, "--last", 4, "--out", out)
    assert code == 2 and "only 3 checkpoint(s)" in err


def test_evaluate_from_a_bundle_equals_the_checkpoint(checkpoint, corpus_dir, tmp_path, capsys):
    """An exported bundle decodes exactly as the checkpoint it came from."""
    bundle = tmp_path / "bundle"
    assert run_nmt(capsys, "export", checkpoint, bundle)[0] == 0
    outputs = {}
    for source in ("checkpoint", "bundle"):
        path = checkpoint if source == "checkpoint" else bundle
        code, _, _ = run_nmt(
            capsys, "evaluate", f"--{source}", path, "--corpus", corpus_dir, "--beam-size", 3,
            "--max-length", 40, "--out-dir", tmp_path / source, "--no-progress",
        )  # fmt: skip
        assert code == 0
        outputs[source] = (tmp_path / source / "test_2016_flickr.hyp").read_text(encoding="utf-8")
    assert outputs["bundle"] == outputs["checkpoint"]
    assert outputs["bundle"].strip()
