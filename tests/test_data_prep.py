"""Translation corpus preparation (data_prep/, nmt/wordpieces.py, nmt/corpus.py).

Every test works on slices of the real Multi30k files, written to a temporary directory; nothing
is downloaded (the hub loaders are exercised on local directories laid out like their hub
repositories).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from data_prep import parallel_corpus  # noqa: E402
from data_prep.cleaning import CleaningConfig, clean_split, clean_text  # noqa: E402
from data_prep.reading import read_parallel  # noqa: E402
from nmt.corpus import COLUMNS, PreparedCorpus  # noqa: E402
from nmt.errors import UserError  # noqa: E402
from nmt.special_tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID  # noqa: E402
from nmt.wordpieces import Wordpieces  # noqa: E402

SLICE = {"train": 2000, "val": 150, "test_2016_flickr": 150, "test_2017_flickr": 150}
VOCAB = "600"
REPO_ROOT = Path(__file__).resolve().parents[1]


def real_lines(corpora: Path, split: str, lang: str, count: int) -> list[str]:
    with gzip.open(corpora / "multi30k" / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(count)]


def write_lines(path: Path, lines: list[str]) -> Path:
    data = "".join(f"{line}\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.fixture(scope="module")
def multi30k_dir(corpora: Path, tmp_path_factory) -> Path:
    """The first lines of each real Multi30k en/de/fr file, in the raw layout."""
    directory = tmp_path_factory.mktemp("multi30k")
    for split, count in SLICE.items():
        for lang in ("en", "de", "fr"):
            write_lines(directory / f"{split}.{lang}.gz", real_lines(corpora, split, lang, count))
    return directory


def prep(*argv: str) -> int:
    return parallel_corpus.main(["--vocab-size", VOCAB, "--num-proc", "1", *argv])


@pytest.fixture(scope="module")
def prepared(multi30k_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "multi30k.en-de"
    assert (
        prep(
            "--corpus",
            "multi30k",
            "--src",
            "en",
            "--tgt",
            "de",
            "--data-dir",
            str(multi30k_dir),
            "--out",
            str(out),
        )
        == 0
    )
    return out


# --- the prepared directory ---------------------------------------------------------------------


def test_prepared_corpus_layout_and_columns(prepared: Path, multi30k_dir: Path) -> None:
    corpus = PreparedCorpus(prepared)
    assert corpus.split_names == list(SLICE)
    assert (corpus.src_lang, corpus.tgt_lang) == ("en", "de")
    assert corpus.wordpieces.vocab_size == int(VOCAB)
    train = corpus.split("train")
    assert train.column_names == list(COLUMNS)
    assert str(train.features["src_ids"].feature.dtype) == "int32"
    assert str(train.features["src_len"].dtype) == "int32"
    for row in train.select(range(50)):
        assert row["src_len"] == len(row["src_ids"]) > 0
        assert row["tgt_len"] == len(row["tgt_ids"]) > 0
        assert BOS_ID not in row["src_ids"] + row["tgt_ids"]
        assert EOS_ID not in row["src_ids"] + row["tgt_ids"]
        assert corpus.wordpieces.decode(row["tgt_ids"]) == row["tgt_text"]
    # memory-mapped from the directory, not loaded into memory
    assert all(Path(f["filename"]).is_relative_to(prepared) for f in train.cache_files)


def test_test_sets_untouched(prepared: Path, multi30k_dir: Path) -> None:
    corpus = PreparedCorpus(prepared)
    for split in ("val", "test_2016_flickr", "test_2017_flickr"):
        pairs = list(
            read_parallel(multi30k_dir / f"{split}.en.gz", multi30k_dir / f"{split}.de.gz")
        )
        dataset = corpus.split(split)
        assert dataset["src_text"] == [src for src, _ in pairs]
        assert dataset["tgt_text"] == [tgt for _, tgt in pairs]
        assert corpus.manifest["splits"][split]["cleaning"] == [
            {"step": "read", "pairs": len(pairs)}
        ]


def test_manifest_contents(prepared: Path, multi30k_dir: Path) -> None:
    manifest = json.loads((prepared / "manifest.json").read_text())
    train_sources = manifest["sources"]["train"]
    assert [s["side"] for s in train_sources] == ["src", "tgt"]
    for entry in train_sources:
        assert entry["sha256"] == hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest()
    assert Path(train_sources[0]["path"]).name == "train.en.gz"
    steps = [step["step"] for step in manifest["splits"]["train"]["cleaning"]]
    assert steps == [
        "read",
        "normalize",
        "control_chars",
        "whitespace",
        "empty",
        "max_length",
        "length_ratio",
        "duplicates",
    ]
    assert manifest["splits"]["train"]["cleaning"][0]["pairs"] == SLICE["train"]
    assert (
        manifest["splits"]["train"]["pairs"] == manifest["splits"]["train"]["cleaning"][-1]["pairs"]
    )
    pieces = manifest["wordpieces"]
    assert pieces["vocab_size"] == int(VOCAB) and pieces["model_type"] == "unigram"
    assert pieces["byte_fallback"] is True and pieces["shared"] is True
    assert (pieces["pad_id"], pieces["unk_id"], pieces["bos_id"], pieces["eos_id"]) == (
        PAD_ID,
        UNK_ID,
        BOS_ID,
        EOS_ID,
    )
    assert {"python", "datasets", "sentencepiece", "pyarrow"} <= set(manifest["packages"])
    assert manifest["command"].startswith("nmt prep translation ")
    assert "--corpus multi30k" in manifest["command"]
    assert len(manifest["fingerprint"]) == 64
    assert set(manifest["seconds"]) == {"read_and_clean", "wordpieces", "encode_and_write", "total"}


# --- wordpieces -------------------------------------------------------------------------------


def test_wordpiece_round_trip_on_real_lines(prepared: Path, corpora: Path) -> None:
    wordpieces = PreparedCorpus(prepared).wordpieces
    # unseen lines (the test set) in both languages, umlauts and eszett included
    lines = real_lines(corpora, "test_2017_flickr", "de", 1000)
    lines += real_lines(corpora, "test_2017_flickr", "en", 1000)
    assert any(c in "".join(lines) for c in "äöüß")
    assert any("ß" in line for line in lines)
    for line in lines:
        assert wordpieces.decode(wordpieces.encode(line)) == clean_text(line)
    # byte fallback: characters never seen in training are not unknown
    ids = wordpieces.encode("Ein Drache 龍 frisst Ω")
    assert UNK_ID not in ids
    assert wordpieces.decode(ids) == "Ein Drache 龍 frisst Ω"


def test_wordpieces_special_ids_and_pickle(prepared: Path) -> None:
    wordpieces = Wordpieces.load(prepared / "wordpieces.model")
    ids = wordpieces.encode("Zwei Männer")
    assert wordpieces.decode([BOS_ID, *ids, EOS_ID, *ids, PAD_ID]) == "Zwei Männer"
    assert wordpieces.decode([*ids, PAD_ID, PAD_ID]) == "Zwei Männer"
    copy = pickle.loads(pickle.dumps(wordpieces))
    assert copy.encode("Zwei Männer") == ids
    assert Wordpieces.from_bytes(wordpieces.model_bytes).vocab_size == wordpieces.vocab_size
    with pytest.raises(UserError, match="not a sentencepiece model"):
        Wordpieces.from_bytes(b"not a model")


# --- cleaning ---------------------------------------------------------------------------------


def test_cleaning_steps_counted(corpora: Path) -> None:
    from datasets import Dataset

    en = real_lines(corpora, "train", "en", 20)
    de = real_lines(corpora, "train", "de", 20)
    src, tgt = list(en), list(de)
    src[1] = "\ufb01ve " + en[1]  # NFKC: the "fi" ligature becomes "fi"
    src[2] = en[2].replace(" ", "\u200b ", 1)  # a zero-width space (format character)
    tgt[3] = "  " + de[3].replace(" ", "\t ")  # tabs and runs of spaces
    src[4], tgt[4] = "   ", de[4]  # empty after whitespace cleaning
    src[5] = " ".join([en[5]] * 30)  # more than max_words
    src[6], tgt[6] = " ".join(en[6].split()[:2]), f"{de[6]} {de[7]}"  # length ratio
    assert 9 * 2 < len(tgt[6].split()) < 150
    src += [en[0], en[8], en[8] + " "]  # exact duplicates (the last after whitespace cleaning)
    tgt += [de[0], de[8], de[8]]
    dataset = Dataset.from_dict({"src": src, "tgt": tgt})

    cleaned, counts = clean_split(dataset, CleaningConfig(max_words=150, max_ratio=9.0))

    assert counts == [
        {"step": "read", "pairs": 23},
        {"step": "normalize", "pairs": 23, "changed": 1},
        {"step": "control_chars", "pairs": 23, "changed": 1},
        {"step": "whitespace", "pairs": 23, "changed": 3},  # tabs, "   ", trailing space
        {"step": "empty", "pairs": 22, "dropped": 1},
        {"step": "max_length", "pairs": 21, "dropped": 1},
        {"step": "length_ratio", "pairs": 20, "dropped": 1},
        {"step": "duplicates", "pairs": 17, "dropped": 3},
    ]
    assert cleaned.num_rows == 17
    assert cleaned["src"][1] == "five " + en[1]
    assert cleaned["src"][2] == en[2]
    assert cleaned["tgt"][3] == de[3]
    assert cleaned["src"][:4] == [en[0], "five " + en[1], en[2], en[3]]
    assert en[4] not in cleaned["src"]  # the empty pair is gone, the others stay in order
    assert cleaned["src"][4:] == [en[i] for i in range(7, 20)]

    kept, _ = clean_split(dataset, CleaningConfig(max_words=150, dedupe=False))
    assert kept.num_rows == 20


def test_worker_processes_give_the_same_result(prepared: Path, corpora: Path) -> None:
    """map(num_proc=2) pickles the cleaning config and the wordpieces into workers."""
    from datasets import Dataset

    from data_prep.encoding import encode_split

    en = real_lines(corpora, "train", "en", 600)
    de = real_lines(corpora, "train", "de", 600)
    dataset = Dataset.from_dict({"src": en + en[:50], "tgt": de + de[:50]})
    wordpieces = PreparedCorpus(prepared).wordpieces
    single, single_counts = clean_split(dataset, CleaningConfig())
    parallel, parallel_counts = clean_split(dataset, CleaningConfig(), num_proc=2)
    assert parallel_counts == single_counts and parallel_counts[-1]["dropped"] >= 50
    assert parallel["src"] == single["src"]
    assert encode_split(parallel, wordpieces, num_proc=2)[:] == encode_split(single, wordpieces)[:]


def test_filters_and_dedupe_through_the_command(multi30k_dir: Path, corpora, tmp_path) -> None:
    """Defects in the training split are removed and counted; the same in a test set stay."""
    en = real_lines(corpora, "train", "en", 400)
    de = real_lines(corpora, "train", "de", 400)
    bad_en = en + [en[0], en[1], "", "  ", " ".join([en[2]] * 40)]
    bad_de = de + [de[0], de[1], de[2], "", de[3]]
    files = {
        "train.en": bad_en,
        "train.de": bad_de,
        "test.en": bad_en[-60:],
        "test.de": bad_de[-60:],
    }
    for name, lines in files.items():
        write_lines(tmp_path / name, lines)
    out = tmp_path / "out"
    prep(
        "--corpus", "files", "--src", "en", "--tgt", "de", "--out", str(out), "--vocab-size",
        "400", "--max-words", "100",
        "--split", f"train={tmp_path / 'train.en'},{tmp_path / 'train.de'}",
        "--split", f"test={tmp_path / 'test.en'},{tmp_path / 'test.de'}",
    )  # fmt: skip
    corpus = PreparedCorpus(out)
    counts = {s["step"]: s for s in corpus.manifest["splits"]["train"]["cleaning"]}
    assert counts["read"]["pairs"] == 405
    assert counts["empty"]["dropped"] == 2
    assert counts["max_length"]["dropped"] == 1
    assert counts["duplicates"]["dropped"] == 2
    assert corpus.split("train").num_rows == 400
    test = corpus.split("test")
    assert test["src_text"] == bad_en[-60:] and test["tgt_text"] == bad_de[-60:]


# --- bad input --------------------------------------------------------------------------------


def files_args(tmp_path: Path, src: Path, tgt: Path) -> list[str]:
    out = tmp_path / "out"
    return [
        "--corpus", "files", "--src", "en", "--tgt", "de", "--out", str(out),
        "--split", f"train={src},{tgt}",
    ]  # fmt: skip


def test_line_count_mismatch_names_both_files(corpora: Path, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "a.en.gz", real_lines(corpora, "val", "en", 120))
    tgt = write_lines(tmp_path / "a.de", real_lines(corpora, "val", "de", 117))
    with pytest.raises(UserError) as error:
        prep(*files_args(tmp_path, src, tgt))
    message = str(error.value)
    assert str(src) in message and str(tgt) in message
    assert "120" in message and "117" in message
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match=r"a.de has 117 lines, .*a.en.gz has 120"):
        list(read_parallel(tgt, src))


def test_invalid_utf8_names_file_and_line(corpora: Path, tmp_path: Path) -> None:
    en = real_lines(corpora, "val", "en", 300)
    de = real_lines(corpora, "val", "de", 300)
    src = write_lines(tmp_path / "a.en", en)
    raw = [line.encode() for line in de]
    raw[41] = raw[41][:10] + b"\xff" + raw[41][10:]  # line 42: an invalid UTF-8 byte
    tgt = tmp_path / "a.de.gz"
    tgt.write_bytes(gzip.compress(b"".join(line + b"\n" for line in raw)))
    with pytest.raises(UserError, match=r"a\.de\.gz: invalid UTF-8 at line 42, byte 11 \(0xff\)"):
        list(read_parallel(src, tgt))
    pairs = list(read_parallel(src, tgt, errors="replace"))
    assert pairs[41][1] == de[41][:10] + "\ufffd" + de[41][10:]
    assert pairs[42][1] == de[42]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "file is empty"),
        (lambda p: p.write_bytes(b"this is not gzip data\n"), "unreadable gzip"),
        (lambda p: p.write_bytes(gzip.compress(b"Ein Hund.\n" * 50)[:-12]), "unreadable gzip"),
    ],
    ids=["missing", "empty", "not-gzip", "truncated-gzip"],
)
def test_bad_files_are_one_line_errors(make, expected, corpora: Path, tmp_path: Path):
    src = write_lines(tmp_path / "a.en", real_lines(corpora, "val", "en", 50))
    tgt = tmp_path / "a.de.gz"
    make(tgt)
    with pytest.raises(UserError, match=expected) as error:
        prep(*files_args(tmp_path, src, tgt))
    assert str(tgt) in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--corpus", "nope", "--src", "en", "--tgt", "de"], "invalid choice: 'nope'"),
        (["--corpus", "multi30k", "--src", "en", "--tgt", "xx"], "multi30k has no language 'xx'"),
        (["--corpus", "wmt14", "--src", "de", "--tgt", "fr"], "wmt14 has no pair de-fr"),
    ],
)
def test_command_line_errors_are_one_line(argv, expected, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nmt.cli", "prep", "translation", *argv, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "HF_DATASETS_OFFLINE": "1"},
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and expected in result.stderr
    assert "Traceback" not in result.stderr


def test_prepared_corpus_errors(prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a prepared corpus"):
        PreparedCorpus(tmp_path)
    with pytest.raises(UserError, match="no split 'dev'"):
        PreparedCorpus(prepared).split("dev")


# --- rerun and interruption -------------------------------------------------------------------


def test_rerun_reuses_and_changed_input_rebuilds(corpora: Path, tmp_path: Path, capsys):
    src = write_lines(tmp_path / "train.en", real_lines(corpora, "train", "en", 300))
    tgt = write_lines(tmp_path / "train.de", real_lines(corpora, "train", "de", 300))
    args = [*files_args(tmp_path, src, tgt), "--vocab-size", "400"]
    prep(*args)
    manifest_path = tmp_path / "out" / "manifest.json"
    first = json.loads(manifest_path.read_text())
    stamp = manifest_path.stat().st_mtime_ns
    capsys.readouterr()

    prep(*args)
    assert "Up to date (reused)" in capsys.readouterr().out
    assert manifest_path.stat().st_mtime_ns == stamp

    write_lines(src, real_lines(corpora, "train", "en", 280))
    write_lines(tgt, real_lines(corpora, "train", "de", 280))
    prep(*args)
    second = json.loads(manifest_path.read_text())
    assert second["fingerprint"] != first["fingerprint"]
    assert second["splits"]["train"]["cleaning"][0]["pairs"] == 280

    prep(*args, "--max-words", "20")  # a changed option rebuilds too
    assert json.loads(manifest_path.read_text())["cleaning"]["max_words"] == 20
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_interrupted_run_leaves_nothing_that_looks_complete(
    corpora: Path, tmp_path: Path, monkeypatch
) -> None:
    src = write_lines(tmp_path / "train.en", real_lines(corpora, "train", "en", 300))
    tgt = write_lines(tmp_path / "train.de", real_lines(corpora, "train", "de", 300))
    args = [*files_args(tmp_path, src, tgt), "--vocab-size", "400"]
    out = tmp_path / "out"

    def interrupted(*_, **__):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(parallel_corpus, "encode_split", interrupted)
        with pytest.raises(KeyboardInterrupt):
            prep(*args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.de", "train.en"]

    prep(*args)
    before = (out / "manifest.json").read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(parallel_corpus, "encode_split", interrupted)
        with pytest.raises(KeyboardInterrupt):
            prep(*args, "--force")
    assert (out / "manifest.json").read_bytes() == before  # the previous output is intact
    assert PreparedCorpus(out).split("train").num_rows == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "train.de", "train.en"]


# --- other sources: TSV/JSONL files and the hub layouts ---------------------------------------


def jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_tsv_and_jsonl_files(corpora: Path, tmp_path: Path) -> None:
    en = real_lines(corpora, "train", "en", 300)
    fr = real_lines(corpora, "train", "fr", 300)
    rows = zip(["fr", *fr], ["en", *en], strict=True)  # a header row, then the pairs
    tsv = tmp_path / "train.tsv.gz"
    tsv.write_bytes(gzip.compress("".join(f"{a}\t{b}\n" for a, b in rows).encode()))
    records = [{"en": a, "fr": b} for a, b in zip(en[:40], fr[:40], strict=True)]
    val = jsonl(tmp_path / "val.jsonl", records)
    out = tmp_path / "out"
    pair = [
        *"--corpus files --src en --tgt fr --vocab-size 400 --model-type bpe --out".split(),
        str(out),
    ]
    prep(*pair, "--split", f"train={tsv}", "--split", f"val={val}")
    corpus = PreparedCorpus(out)
    assert corpus.split("train")["tgt_text"][:5] == fr[:5]
    assert corpus.split("val")["src_text"] == en[:40]
    assert corpus.manifest["wordpieces"]["model_type"] == "bpe"
    assert corpus.wordpieces.decode(corpus.split("val")["tgt_ids"][0]) == fr[0]

    bad = tmp_path / "bad.tsv"
    bad.write_text("en\tfr\nA dog.\n")
    with pytest.raises(UserError, match=r"bad\.tsv:2: 1 fields, the header has 2"):
        prep(*pair, "--split", f"train={bad}")


@pytest.fixture
def hub_cache(monkeypatch, tmp_path: Path) -> None:
    """Keep the datasets cache of these tests in their temporary directory."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


WMT14_README = """---
configs:
- config_name: fr-en
  data_files:
  - split: train
    path: fr-en/train-*
  - split: validation
    path: fr-en/validation-*
  - split: test
    path: fr-en/test-*
---
"""


def test_wmt14_loader_on_a_local_copy_of_the_hub_layout(corpora, tmp_path, hub_cache):
    """The wmt14 loader parses {"translation": {"en": ..., "fr": ...}} parquet records."""
    from datasets import Dataset

    repo = tmp_path / "wmt14"
    (repo / "fr-en").mkdir(parents=True)
    (repo / "README.md").write_text(WMT14_README)
    sizes = {"train": ("train", 400), "validation": ("val", 50), "test": ("test_2016_flickr", 60)}
    lines = {}
    for hub_split, (split, count) in sizes.items():
        en, fr = (real_lines(corpora, split, lang, count) for lang in ("en", "fr"))
        lines[hub_split] = (en, fr)
        records = [{"translation": {"en": a, "fr": b}} for a, b in zip(en, fr, strict=True)]
        parquet = repo / "fr-en" / f"{hub_split}-00000-of-00001.parquet"
        Dataset.from_list(records).to_parquet(parquet)
    out = tmp_path / "out"
    prep(*"--corpus wmt14 --src fr --tgt en --vocab-size 400 --hub-repo".split(), str(repo),
         "--out", str(out))  # fmt: skip
    corpus = PreparedCorpus(out)
    assert corpus.split_names == ["train", "val", "test_newstest2014"]
    test = corpus.split("test_newstest2014")
    assert test["src_text"] == lines["test"][1] and test["tgt_text"] == lines["test"][0]
    assert corpus.split("train")["tgt_text"][:5] == lines["train"][0][:5]
    assert corpus.manifest["sources"]["train"][0]["config"] == "fr-en"


def test_multi30k_hub_loader_on_a_local_copy(corpora, tmp_path, hub_cache):
    """bentrevett/multi30k: train.jsonl, val.jsonl, test.jsonl of {"en": ..., "de": ...}."""
    repo = tmp_path / "multi30k-hub"
    repo.mkdir()
    splits = {"train": ("train", 400), "val": ("val", 50), "test": ("test_2016_flickr", 60)}
    for name, (split, count) in splits.items():
        en, de = (real_lines(corpora, split, lang, count) for lang in ("en", "de"))
        jsonl(repo / f"{name}.jsonl", [{"en": a, "de": b} for a, b in zip(en, de, strict=True)])
    out = tmp_path / "out"
    hub = [*"--corpus multi30k --vocab-size 400 --hub-repo".split(), str(repo), "--out", str(out)]
    prep(*hub, "--src", "de", "--tgt", "en")
    corpus = PreparedCorpus(out)
    assert corpus.split_names == ["train", "val", "test_2016_flickr"]
    expected = real_lines(corpora, "test_2016_flickr", "de", 60)
    assert corpus.split("test_2016_flickr")["src_text"] == expected
    with pytest.raises(UserError, match="en-de only"):
        prep(*hub, "--src", "en", "--tgt", "fr")

    en = real_lines(corpora, "val", "en", 50)
    records = [{"en": line, "de": line} for line in en]
    records[7] = {"en": en[7]}  # a record without its German side
    jsonl(repo / "val.jsonl", records)
    with pytest.raises(UserError, match="val.* row 7: fields 'en' and 'de' must be strings"):
        prep(*hub, "--src", "en", "--tgt", "de")
