"""Character LM: exact state carry, windows that score every symbol once, bpc against an
independent float64 computation, learning on real PTB, sampling, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nmt.models.char_lm import CharLM, CharLMConfig, CharVocabulary
from nmt.modules.recurrent import RecurrentConfig
from nmt.special_tokens import RESERVED_PIECES
from nmt.training.char_lm import IGNORE_INDEX, CharLMDataModule, CharLMTask, StreamWindows

CELLS = ["lstm", "hyperlstm", "ln_hyperlstm"]


def tiny_config(cell: str, vocab_size: int = 54, dropout: float = 0.0) -> CharLMConfig:
    recurrent = RecurrentConfig(
        cell=cell,
        hidden_size=24,
        hyper_size=8,
        n_z=4,
        recurrent_dropout=0.0 if cell == "lstm" else dropout,
    )
    return CharLMConfig(
        vocab_size=vocab_size,
        embedding_size=12,
        num_layers=2,
        recurrent=recurrent,
        input_dropout=dropout,
        output_dropout=dropout,
    )


@pytest.fixture(scope="module")
def ptb_slice(corpora, tmp_path_factory):
    """A prepared-corpus directory holding slices of the real PTB character splits."""
    from data_prep import char_corpus

    directory = tmp_path_factory.mktemp("ptb_slice")
    source = corpora / "ptb_char"
    splits = {
        split: char_corpus.ptb_symbols(source / f"ptb.char.{split}.txt")[:size]
        for split, size in (("train", 20_000), ("valid", 401), ("test", 401))
    }
    vocabulary = CharVocabulary.from_characters(
        set(char_corpus.ptb_symbols(source / "ptb.char.train.txt"))
    )
    vocabulary.save(directory / "vocab.json")
    for split, symbols in splits.items():
        np.save(directory / f"{split}.npy", np.array(vocabulary.encode(symbols), dtype=np.uint8))
    return directory


@pytest.mark.parametrize("cell", CELLS)
def test_state_carry_is_exact(cell):
    torch.manual_seed(0)
    model = CharLM(tiny_config(cell)).eval()
    ids = torch.randint(4, 54, (3, 30))
    with torch.no_grad():
        whole, whole_states = model(ids)
        first, states = model(ids[:, :15])
        second, final_states = model(ids[:, 15:], states)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-5, rtol=1e-5)
    for a, b in zip(final_states, whole_states, strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_windows_score_every_symbol_once_in_stream_order():
    ids = np.arange(4, 4 + 103, dtype=np.int64) % 250
    windows = StreamWindows(ids, streams=4, seq_len=7)
    batches = list(windows)
    assert len(batches) == len(windows) == math.ceil(math.ceil(102 / 4) / 7)
    inputs = torch.cat([b[0] for b in batches], 1)
    targets = torch.cat([b[1] for b in batches], 1)
    scored = targets[targets != IGNORE_INDEX]
    assert scored.tolist() == ids[1:].tolist()  # row-major = stream after stream, in order
    real = targets != IGNORE_INDEX
    assert inputs[real].tolist() == ids[:-1].tolist()
    # two shards of two streams each are the rows of the four streams
    shard = StreamWindows(ids, streams=2, seq_len=7, shard=1, num_shards=2)
    assert torch.equal(torch.cat([b[1] for b in shard], 1), targets[2:])


def independent_bpc(model: CharLM, ids: np.ndarray, streams: int) -> float:
    """Float64 cross entropy of each stream's symbols given all before it in the stream."""
    targets_total, nats = 0, 0.0
    per = math.ceil((len(ids) - 1) / streams)
    with torch.no_grad():
        for s in range(streams):
            piece = torch.from_numpy(
                ids[s * per : min((s + 1) * per, len(ids) - 1) + 1].astype(np.int64)
            )
            logits, _ = model(piece[None, :-1])
            log_probs = torch.log_softmax(logits[0].double(), -1)
            nats -= log_probs.gather(1, piece[1:, None]).sum().item()
            targets_total += len(piece) - 1
    assert targets_total == len(ids) - 1
    return nats / targets_total / math.log(2)


@pytest.mark.parametrize("streams", [1, 3])
def test_bpc_over_a_split_equals_mean_cross_entropy(ptb_slice, streams):
    import lightning as L

    torch.manual_seed(0)
    data = CharLMDataModule(str(ptb_slice), eval_batch_size=streams, eval_seq_len=32)
    task = CharLMTask(tiny_config("hyperlstm", dropout=0.2))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (result,) = trainer.validate(task, datamodule=data)
    ids = np.load(ptb_slice / "valid.npy")
    expected = independent_bpc(task.model.eval(), ids, streams)
    assert result["val/bpc"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "hyperlstm"])
def test_a_few_steps_reduce_the_loss(ptb_slice, cell, tmp_path):
    import lightning as L

    torch.manual_seed(0)
    data = CharLMDataModule(str(ptb_slice), batch_size=16, seq_len=40)
    task = CharLMTask(tiny_config(cell), learning_rate=1e-2)
    held_out = torch.from_numpy(np.load(ptb_slice / "valid.npy").astype(np.int64)).view(1, -1)

    def valid_loss() -> float:
        with torch.no_grad():
            logits, _ = task.model.eval()(held_out[:, :-1])
        task.model.train()
        return torch.nn.functional.cross_entropy(logits[0], held_out[0, 1:]).item()

    before = valid_loss()
    trainer = L.Trainer(max_steps=25, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(task, datamodule=data)
    after = valid_loss()
    assert after < before - 0.7, (before, after)  # from uniform (ln 54 = 4.0) towards 3

    # the checkpoint carries what a plain-torch loader needs
    path = tmp_path / "char_lm.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    meta = checkpoint["hypernmt"]
    assert meta["task"] == "char_lm" and meta["vocabulary"] == data.vocabulary.symbols
    model = CharLM(CharLMConfig.from_dict(meta["model_config"])).eval()
    weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    model.load_state_dict(weights)
    ids = torch.randint(4, 54, (2, 9))
    torch.testing.assert_close(model(ids)[0], task.model.eval()(ids)[0])


def test_sampling_continues_a_prefix():
    torch.manual_seed(0)
    model = CharLM(tiny_config("hyperlstm")).eval()
    prefix = [10, 11, 12]
    drawn = model.sample(prefix, 40, temperature=1.0, generator=torch.Generator().manual_seed(1))
    again = model.sample(prefix, 40, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert drawn == again and len(drawn) == 40
    assert min(drawn) >= len(RESERVED_PIECES)
    # temperature 0 is greedy: each id is the argmax given everything before it
    greedy = model.sample(prefix, 5, temperature=0.0)
    logits, _ = model(torch.tensor([prefix + greedy]))
    expected = logits[0, len(prefix) - 1 : -1, len(RESERVED_PIECES) :].argmax(-1) + len(
        RESERVED_PIECES
    )
    assert greedy == expected.tolist()


def test_scalings_picture(tmp_path):
    from PIL import Image

    from nmt.errors import UserError
    from nmt.plots.small_tasks import plot_scalings

    vocabulary = CharVocabulary.from_characters(set("abcdefghijklmnopqrstuvwxyz_\n"))
    path = tmp_path / "lm.ckpt"
    for cell in ("hyperlstm", "lstm"):
        model = CharLM(tiny_config(cell, vocab_size=len(vocabulary)))
        meta = {"task": "char_lm", "model_config": model.config.to_dict(),
                "vocabulary": vocabulary.symbols}  # fmt: skip
        state = {f"model.{k}": v for k, v in model.state_dict().items()}
        torch.save({"hypernmt": meta, "state_dict": state}, path)
        if cell == "lstm":
            with pytest.raises(UserError, match="needs a HyperLSTM cell"):
                plot_scalings(path, "the market", tmp_path / "lstm.png")
        else:
            out = plot_scalings(path, "The market fell", tmp_path / "scalings.png", layer=1)
            with Image.open(out) as image:
                assert image.format == "PNG" and image.height > image.width > 400


def test_cosine_schedule_anneals_to_the_final_rate_at_max_steps(ptb_slice, tmp_path):
    import lightning as L

    data = CharLMDataModule(str(ptb_slice), batch_size=4, seq_len=16)
    task = CharLMTask(tiny_config("lstm"), 1e-2, lr_schedule="cosine", final_learning_rate=1e-4)
    rates = []

    class RecordRate(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[RecordRate()],
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(task, datamodule=data)
    # 1e-4 + (1e-2 - 1e-4) (1 + cos(pi k / 4)) / 2, worked out by hand for k = 0..3
    assert rates == pytest.approx([1e-2, 0.0085501786, 0.00505, 0.0015498214])
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-4)
