"""What several test modules share: paths of the committed test data, the records kept of
earlier formats, and stand-ins. Test modules import from here, never from each other."""

from __future__ import annotations

import gzip
import io
import itertools
import json
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests
import torch
from torch import Tensor

from nmt.decoding import DecodingOptions
from nmt.models.char_lm import CharLM, CharLMConfig, CharVocabulary
from nmt.models.convnet import ConvNet, ConvNetConfig
from nmt.models.translation import TranslationConfig, TranslationModel
from nmt.modules.recurrent import RecurrentConfig
from nmt.special_tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from nmt.wordpieces import Wordpieces

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
# A Lightning checkpoint of a tiny model written before checkpoints carried a checksum.
BEFORE_CHECKSUMS = TEST_DATA / "translation-before-checksums.ckpt"
# A checkpoint and its bundle written by `nmt fit` and `nmt export` before the config renames
# (n_z, recurrent.hidden_size, label smoothing on the task), with their logits on one pair.
BEFORE_RENAMES = TEST_DATA / "legacy"
TABLE_VOCAB = 8  # the hand-set table model's vocabulary
# The prepared slice of Multi30k that the training tests use (the ``corpus`` fixture)
CORPUS_PAIRS = {"train": 64, "val": 32, "test_2016_flickr": 32, "test_2017_flickr": 32}
CORPUS_VOCAB = 400


def before_renames_input() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pair the legacy logits were recorded on: src ids ending in EOS, BOS + target ids."""
    src = torch.tensor([[5, 17, 42, 99, 8, 3]])
    return src, torch.tensor([6]), torch.tensor([[2, 7, 23, 61, 8]])


def before_renames_logits(kind: str) -> torch.Tensor:
    """The first 6 logits per target step, as the code before the renames computed them."""
    expected = json.loads((BEFORE_RENAMES / "expected-logits.json").read_text())
    return torch.tensor(expected[kind])


class FailingWordpieces:
    """A bundle's wordpieces, except that formatting one given output raises ``error`` (as a
    damaged weight can make a model emit what the wordpiece model cannot decode)."""

    def __init__(self, wordpieces, poison: list[int], error: Exception | None = None) -> None:
        self.wordpieces, self.poison = wordpieces, poison
        self.error = error or IndexError("piece id is out of range")

    def __getattr__(self, name):
        return getattr(self.wordpieces, name)

    def decode(self, ids):
        if list(ids) == self.poison:
            raise self.error
        return self.wordpieces.decode(ids)


# ---------------------------------------------------------------------- from test_beam_search.py


A, B, C, D = 4, 5, 6, 7  # ordinary tokens of the table model


@dataclass
class SimpleEncoderOutput:
    memory: Tensor
    mask: Tensor

    def index_select(self, index: Tensor) -> SimpleEncoderOutput:
        return SimpleEncoderOutput(
            self.memory.index_select(0, index), self.mask.index_select(0, index)
        )


class TableModel:
    """P(next token | output prefix) and the step's attention, looked up in hand-set tables.

    Tokens missing from a prefix's entry have probability 0; prefixes missing from the table
    end at once (EOS with probability 1). Attention defaults to uniform over the source.
    The decoder state is the id of the output prefix.
    """

    def __init__(self, probs: dict, attention: dict | None = None) -> None:
        self.probs = probs
        self.attention = attention or {}
        self.prefixes: list[tuple[int, ...]] = [()]
        self.steps = 0

    def encode(self, src_ids: Tensor, src_lengths: Tensor) -> SimpleEncoderOutput:
        mask = torch.arange(src_ids.shape[1])[None, :] < src_lengths[:, None]
        return SimpleEncoderOutput(src_ids.float()[:, :, None], mask)

    def initial_decoder_state(self, encoder_output: SimpleEncoderOutput) -> tuple[Tensor]:
        return (torch.zeros(encoder_output.mask.shape[0], dtype=torch.long),)

    def decode_step(self, prev_tokens, state, encoder_output):
        self.steps += 1
        rows, width = encoder_output.mask.shape
        log_probs = torch.full((rows, TABLE_VOCAB), float("-inf"))
        attention = torch.zeros(rows, width)
        new_ids = []
        for row in range(rows):
            prefix = self.prefixes[int(state[0][row])]
            if int(prev_tokens[row]) != BOS_ID:
                prefix = (*prefix, int(prev_tokens[row]))
            if prefix not in self.prefixes:
                self.prefixes.append(prefix)
            new_ids.append(self.prefixes.index(prefix))
            for token, p in self.probs.get(prefix, {EOS_ID: 1.0}).items():
                log_probs[row, token] = math.log(p)
            length = int(encoder_output.mask[row].sum())
            weights = self.attention.get(prefix, [1.0 / length] * length)
            attention[row, :length] = torch.tensor(weights)
        return log_probs, attention, (torch.tensor(new_ids),)


def greedy_reference(model, source: list[int], min_length: int, max_tokens: int):
    """Textbook greedy decoding of one sentence: take the argmax until EOS."""
    src = torch.tensor([source + [EOS_ID]])
    encoder_output = model.encode(src, torch.tensor([src.shape[1]]))
    state = model.initial_decoder_state(encoder_output)
    prev, tokens = torch.tensor([BOS_ID]), []
    while True:
        log_probs, _, state = model.decode_step(prev, state, encoder_output)
        log_probs[0, [PAD_ID, BOS_ID]] = float("-inf")
        if len(tokens) < min_length:
            log_probs[0, EOS_ID] = float("-inf")
        token = EOS_ID if len(tokens) == max_tokens else int(log_probs[0].argmax())
        if token == EOS_ID:
            return tokens
        tokens.append(token)
        prev = torch.tensor([token])


# ---------------------------------------------------------------------- from test_bundle.py


TINY_RECURRENT = RecurrentConfig(cell="ln_hyperlstm", hidden_size=16, hyper_size=8, n_z=4)


TINY_VOCAB = 500  # byte fallback alone takes 256 pieces


TEST_DECODING = DecodingOptions(beam_size=3, max_length=12)  # untrained models run to the cap


def multi30k_lines(corpora: Path, split: str, lang: str, count: int) -> list[str]:
    with gzip.open(corpora / "multi30k" / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
        return [line.strip() for line in itertools.islice(f, count)]


def train_wordpieces(corpora: Path) -> Wordpieces:
    """A small shared en+de sentencepiece model with the project's reserved ids."""
    import sentencepiece as spm

    lines = multi30k_lines(corpora, "train", "en", 1500)
    lines += multi30k_lines(corpora, "train", "de", 1500)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=TINY_VOCAB,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        byte_fallback=True,
        minloglevel=2,
    )
    return Wordpieces.from_bytes(model.getvalue())


def tiny_translation_model(seed: int = 0) -> TranslationModel:
    torch.manual_seed(seed)
    config = TranslationConfig(
        vocab_size=TINY_VOCAB,
        embedding_size=16,
        encoder_layers=2,
        decoder_layers=2,
        recurrent=TINY_RECURRENT,
    )
    return TranslationModel(config).eval()


def tiny_classifier(seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet(ConvNetConfig(channels=4)).eval()


def tiny_char_lm(corpora: Path, seed: int = 0) -> tuple[CharLM, list[str]]:
    """An untrained LM over the symbols of the first PTB validation lines ("_" between words)."""
    text = (corpora / "ptb_char" / "ptb.char.valid.txt").read_text()[:5000]
    vocabulary = CharVocabulary.from_characters(set(text.split()) | {"\n"})
    torch.manual_seed(seed)
    config = CharLMConfig(vocab_size=len(vocabulary), embedding_size=8, recurrent=TINY_RECURRENT)
    return CharLM(config).eval(), vocabulary.symbols


# ---------------------------------------------------------------------- from test_server.py


STARTUP_SECONDS = 180  # generous: the workers import torch on a shared, busy machine


SHUTDOWN_SECONDS = 60


MAX_BATCH_SIZE = 16


BATCH_TIMEOUT = 0.2  # wide enough that concurrent test requests surely meet in one batch


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    bundles: dict[str, Path]

    def post(self, path: str, body) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=60)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(directory: Path, bundle_args: list[str], bundles: dict[str, Path]) -> Server:
    port = free_port()
    log = directory / f"server-{port}.log"
    command = [sys.executable, "-m", "nmt.cli", "serve", *bundle_args, "--port", str(port)]
    command += ["--max-batch-size", str(MAX_BATCH_SIZE), "--batch-timeout", str(BATCH_TIMEOUT)]
    command += ["--join-window", str(BATCH_TIMEOUT)]
    command += ["--log-level", "warning"]
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=directory)
    server = Server(f"http://127.0.0.1:{port}", process, log, bundles)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if server.get("/health").status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    stop_server(server)
    pytest.fail(f"the server was not healthy after {STARTUP_SECONDS} s:\n{log.read_text()}")


@contextmanager
def running_server(
    directory: Path, bundle_args: list[str], bundles: dict[str, Path]
) -> Iterator[Server]:
    """A started server that is stopped by PID however the block ends."""
    server = start_server(directory, bundle_args, bundles)
    try:
        yield server
    finally:
        stop_server(server)


def stop_server(server: Server, signum: int = signal.SIGTERM) -> list[psutil.Process]:
    """Signal the main process by PID; return the processes that outlived it (then kill them)."""
    try:
        family = [psutil.Process(server.process.pid)]
        family += family[0].children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if server.process.poll() is None:
        server.process.send_signal(signum)
    try:
        server.process.wait(SHUTDOWN_SECONDS)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    _, alive = psutil.wait_procs(family, timeout=5)
    for process in alive:
        process.kill()
    return alive


# ---------------------------------------------------------------------- from test_training.py


def tiny_architecture(cell: str = "lstm", hidden_size: int = 32, **overrides) -> TranslationConfig:
    settings = dict(
        vocab_size=CORPUS_VOCAB,
        embedding_size=32,
        encoder_layers=2,
        decoder_layers=2,
        dropout=0.0,
        recurrent=RecurrentConfig(cell=cell, hidden_size=hidden_size, hyper_size=16, n_z=4),
    )
    settings.update(overrides)
    return TranslationConfig(**settings)


def write_config(directory: Path, corpus: Path, max_steps: int) -> Path:
    config = {
        "seed_everything": 3,
        "model": {
            "class_path": "nmt.training.translation.TranslationTask",
            "init_args": {
                "architecture": {
                    "vocab_size": CORPUS_VOCAB,
                    "embedding_size": 16,
                    "dropout": 0.3,  # resume must reproduce the dropout masks too
                    "recurrent": {
                        "cell": "ln_hyperlstm",
                        "hidden_size": 16,
                        "hyper_size": 8,
                        "n_z": 4,
                    },
                },
                "warmup_steps": 4,
                "bleu_sentences": 8,
                "max_decode_length": 20,
            },
        },
        "data": {
            "class_path": "nmt.training.translation.TranslationDataModule",
            "init_args": {"corpus": str(corpus), "batch_tokens": 400, "eval_batch_tokens": 4000},
        },
        "trainer": {
            "accelerator": "cpu",
            "max_steps": max_steps,
            "val_check_interval": 3,
            "check_val_every_n_epoch": None,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "gradient_clip_val": 1.0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(directory), "name": "logs"},
            },
        },
        "checkpoint": {"dirpath": str(directory / "checkpoints"), "monitor": "val/bleu"},
        "last_checkpoint": {"every_n_train_steps": 1},
        "recent_checkpoints": {"save_top_k": 2},
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"config{max_steps}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path
