"""Training translation models with Lightning (nmt/training): batching, overfitting real pairs,
every cell type, exact resume, checkpoints loadable without Lightning, BLEU bookkeeping.

The corpus is the first 64 real Multi30k en-de training pairs (and 32 of each evaluation split),
prepared by the real pipeline with a 400-piece vocabulary.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import CORPUS_VOCAB, tiny_architecture, write_config

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from nmt.checkpoints import load_translation  # noqa: E402
from nmt.decoding import DecodingOptions, beam_search  # noqa: E402
from nmt.errors import UserError  # noqa: E402
from nmt.modules.recurrent import CELL_TYPES  # noqa: E402
from nmt.special_tokens import EOS_ID, PAD_ID  # noqa: E402
from nmt.training.cli import main as cli_main  # noqa: E402
from nmt.training.translation import (  # noqa: E402
    LengthSortedSampler,
    TokenBatchSampler,
    TranslationDataModule,
    TranslationTask,
    bleu_from_statistics,
    bleu_statistics,
)

REPO = Path(__file__).resolve().parents[1]


def quiet_trainer(**overrides) -> L.Trainer:
    settings = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=1.0,
    )
    settings.update(overrides)
    return L.Trainer(**settings)


# ---------------------------------------------------------------------------- batching


def real_lengths(corpus: Path) -> list[int]:
    datamodule = TranslationDataModule(str(corpus))
    return datamodule.train_dataloader().dataset.padded_lengths()


def test_token_batches_are_seeded_bounded_and_split_between_ranks(corpus: Path) -> None:
    lengths = real_lengths(corpus)

    def batches(epoch: int, rank: int = 0, world_size: int = 1, seed: int = 1):
        sampler = LengthSortedSampler(lengths, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return TokenBatchSampler(sampler, 300, rank, world_size).epoch_batches()

    first = batches(0)
    assert first == batches(0)  # a pure function of (seed, epoch)
    assert first != batches(1) and first != batches(0, seed=2)
    assert sorted(i for b in first for i in b) == list(range(len(lengths)))  # each pair once
    for batch in first:  # within budget, and no room for one more pair of the same length
        assert len(batch) * max(lengths[i] for i in batch) <= 300

    ranks = [batches(0, rank, 2) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(first) // 2
    seen = [{i for b in r for i in b} for r in ranks]
    assert not seen[0] & seen[1]  # distinct parts of the epoch


def test_batch_budget_below_longest_pair_is_a_user_error(corpus: Path) -> None:
    lengths = real_lengths(corpus)
    with pytest.raises(UserError, match="batch_tokens"):
        TokenBatchSampler(LengthSortedSampler(lengths, shuffle=True), max(lengths) - 1)


def test_vocabulary_mismatch_names_the_field(corpus: Path) -> None:
    task = TranslationTask(tiny_architecture(vocab_size=CORPUS_VOCAB + 1))
    with pytest.raises(UserError, match="architecture.vocab_size"):
        quiet_trainer(max_steps=1).fit(task, TranslationDataModule(str(corpus)))


# ---------------------------------------------------------------------------- learning


@pytest.mark.slow  # 300 steps: about a minute on an idle core
def test_tiny_model_overfits_64_real_pairs(corpus: Path) -> None:
    L.seed_everything(0)
    task = TranslationTask(
        tiny_architecture("lstm", hidden_size=128, embedding_size=128),
        learning_rate=0.01,
        label_smoothing=0.0,
    )
    datamodule = TranslationDataModule(str(corpus), batch_tokens=6000)  # one batch
    trainer = quiet_trainer(max_steps=300)
    trainer.fit(task, datamodule)
    assert trainer.callback_metrics["train/nll"] < 0.1  # nats per target token

    task.model.eval()
    exact = total = 0
    for batch in datamodule.train_dataloader():
        hypotheses = beam_search(
            task.model, batch["src_ids"], batch["src_lengths"], DecodingOptions(beam_size=1)
        )
        for nbest, target in zip(hypotheses, batch["tgt_out"], strict=True):
            reference = target[(target != PAD_ID) & (target != EOS_ID)].tolist()
            exact += nbest[0].tokens == reference
            total += 1
    assert exact >= 0.8 * total, f"greedy output equals the reference on {exact}/{total}"


@pytest.mark.parametrize("cell", CELL_TYPES)
def test_each_cell_type_trains(corpus: Path, cell: str) -> None:
    L.seed_everything(0)
    task = TranslationTask(tiny_architecture(cell), learning_rate=0.01)
    datamodule = TranslationDataModule(str(corpus), batch_tokens=2000)
    batch = next(iter(datamodule.train_dataloader()))
    optimizer = torch.optim.Adam(task.parameters(), lr=0.01)
    losses = []
    for _ in range(6):  # one batch, a few steps: the loss must fall
        loss_sum, _, tokens = task._loss(batch)
        optimizer.zero_grad()
        (loss_sum / tokens).backward()
        optimizer.step()
        losses.append((loss_sum / tokens).item())
    assert losses[-1] < losses[0] - 0.5, losses


# ---------------------------------------------------------------------------- CLI, resume


def final_state(directory: Path) -> dict:
    return torch.load(directory / "checkpoints" / "last.ckpt", weights_only=False)


def test_resume_from_last_checkpoint_equals_uninterrupted_run(corpus: Path, tmp_path) -> None:
    """Stop mid-epoch, resume with --ckpt_path last across an epoch boundary: same weights,
    optimizer state and data order as one uninterrupted run."""
    total, stop = 9, 4  # the corpus makes 8 batches an epoch at 400 tokens
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli_main(["fit", "--config", str(write_config(whole, corpus, total))]) == 0
    assert cli_main(["fit", "--config", str(write_config(parts, corpus, stop))]) == 0
    assert final_state(parts)["global_step"] == stop
    resume = ["fit", "--config", str(write_config(parts, corpus, total)), "--ckpt_path", "last"]
    assert cli_main(resume) == 0

    expected, resumed = final_state(whole), final_state(parts)
    assert resumed["global_step"] == expected["global_step"] == total
    assert expected["epoch"] == 1  # the runs crossed an epoch boundary
    for name, value in expected["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, rtol=0, atol=0, msg=name)
    expected_adam = expected["optimizer_states"][0]["state"]
    resumed_adam = resumed["optimizer_states"][0]["state"]
    for key, state in expected_adam.items():
        torch.testing.assert_close(resumed_adam[key]["exp_avg_sq"], state["exp_avg_sq"])
    loader_state = expected["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state == [{"epoch": 1, "position": 1, "seed": 1}]  # 8 batches an epoch
    assert resumed["loops"]["fit_loop"]["state_dict"]["combined_loader"] == loader_state
    assert list((parts / "checkpoints").glob("best-*.ckpt"))  # the best-BLEU checkpoint


def test_reruns_are_identical_and_validate_after_the_last_update(corpus: Path, tmp_path) -> None:
    """Same config and seed: the same final weights; a run of 5 updates that validates every
    3 also validates after update 5, so its best checkpoint can come from the last update."""
    runs = [tmp_path / "first", tmp_path / "second"]
    for directory in runs:
        assert cli_main(["fit", "--config", str(write_config(directory, corpus, 5))]) == 0
    first, second = (final_state(directory) for directory in runs)
    for name, value in first["state_dict"].items():
        torch.testing.assert_close(second["state_dict"][name], value, rtol=0, atol=0, msg=name)
    (metrics,) = (runs[0] / "logs").glob("version_*/metrics.csv")
    rows = metrics.read_text().splitlines()
    header = rows[0].split(",")
    validated = {
        int(values[header.index("step")])
        for values in (row.split(",") for row in rows[1:])
        if values[header.index("val/bleu")]
    }
    assert validated == {2, 4}  # logged at the step before the counter moves: updates 3 and 5
    recent = sorted(path.name for path in (runs[0] / "checkpoints").glob("recent-*.ckpt"))
    assert recent == ["recent-step=3.ckpt", "recent-step=5.ckpt"]


@pytest.mark.parametrize(
    ("limits", "said"),
    [
        ([], None),  # the budget reached: nothing to say
        (["--trainer.max_epochs", "1"], "update 8 of trainer.max_steps 20 (trainer.max_epochs 1"),
        (["--trainer.max_time", "00:00:00:00"], "update 0 of trainer.max_steps 20 (trainer.max_t"),
    ],
)
def test_a_run_ended_before_max_steps_says_so(
    corpus: Path, tmp_path, limits: list[str], said: str | None
) -> None:
    """A guard that ends a run before its budget in updates is reported with its reason (the
    corpus makes 8 batches an epoch; a zero max_time stops before the first update)."""
    config = write_config(tmp_path, corpus, 20 if said else 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli_main(["fit", "--config", str(config), *limits]) == 0
    stopped = [str(w.message) for w in caught if "training stopped at update" in str(w.message)]
    if said is None:
        assert stopped == []
        assert final_state(tmp_path)["global_step"] == 5
    else:
        assert len(stopped) == 1 and said in stopped[0], stopped


def test_checkpoint_loads_without_lightning(corpus: Path, tmp_path) -> None:
    assert cli_main(["fit", "--config", str(write_config(tmp_path, corpus, 3))]) == 0
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    script = (
        "import sys, torch\n"
        "from nmt.checkpoints import load_translation\n"
        f"model, wordpieces = load_translation({str(checkpoint)!r})\n"
        "assert 'lightning' not in sys.modules, 'loading imported Lightning'\n"
        "print(wordpieces.vocab_size, sum(p.numel() for p in model.parameters()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO
    )
    # `nmt test` on the same checkpoint: loss and greedy BLEU on the test split, logged
    test = ["test", "--config", str(write_config(tmp_path, corpus, 3)), "--ckpt_path", "last"]
    assert cli_main(test) == 0
    from nmt.commands.plot import read_metrics

    assert {"test/bleu", "test/loss"} <= set(read_metrics(tmp_path / "logs"))

    model, wordpieces = load_translation(checkpoint)
    count = sum(p.numel() for p in model.parameters())
    assert result.stdout.split() == [str(CORPUS_VOCAB), str(count)]
    trained = torch.load(checkpoint, weights_only=False)["state_dict"]
    torch.testing.assert_close(model.output.bias, trained["model.output.bias"])
    assert not model.training


def test_load_translation_rejects_other_files(tmp_path) -> None:
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(UserError, match="hypernmt"):
        load_translation(path)
    path.write_bytes(b"truncated")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_translation(path)


def test_plot_curves_joins_the_logs_of_a_resumed_run(tmp_path) -> None:
    from nmt.commands.plot import main as plot_main
    from nmt.commands.plot import read_metrics

    logs = tmp_path / "run" / "logs"
    for version, rows in enumerate([["0,1,5.0,", "0,2,4.0,"], ["0,2,3.5,", "1,3,3.0,10.0"]]):
        (logs / f"version_{version}").mkdir(parents=True)
        text = "\n".join(["epoch,step,train/loss,val/bleu", *rows]) + "\n"
        (logs / f"version_{version}" / "metrics.csv").write_text(text)
    metrics = read_metrics(logs)
    assert metrics["train/loss"] == [(1, 5.0), (2, 3.5), (3, 3.0)]  # the resumed step 2 wins
    assert metrics["val/bleu"] == [(3, 10.0)]
    out = tmp_path / "curves.png"
    assert plot_main(["curves", str(logs), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="metrics.csv"):
        plot_main(["curves", str(tmp_path / "missing"), "--out", str(out)])


# ---------------------------------------------------------------------------- BLEU


def test_summed_bleu_statistics_give_sacrebleu_corpus_bleu(corpora: Path) -> None:
    """Ranks sum BLEU's sufficient statistics; the result is sacreBLEU's corpus BLEU."""
    import sacrebleu

    with gzip.open(corpora / "multi30k" / "val.de.gz", "rt") as file:
        references = [next(file).rstrip("\n") for _ in range(40)]
    # stand-in system output: the references with their words rotated (partial n-gram overlap)
    hypotheses = [" ".join(r.split()[1:] + r.split()[:1]) for r in references]
    parts = [bleu_statistics(hypotheses[i::3], references[i::3]) for i in range(3)]
    expected = sacrebleu.corpus_bleu(hypotheses, [references]).score
    assert 5 < expected < 95
    assert bleu_from_statistics(sum(parts)) == pytest.approx(expected, abs=1e-9)
