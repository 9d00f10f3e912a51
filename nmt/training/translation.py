"""Training a TranslationModel with Lightning: the task, the data module and token batching.

Batches hold about ``batch_tokens`` padded tokens: sentence pairs are sorted by length (ties in a
seeded random order), cut into batches, and the batches shuffled, all from ``(seed, epoch)``, so
an epoch's order is a pure function of the seed. Each rank takes every ``world_size``-th batch
(the same number on every rank), so ranks see distinct parts of each epoch. The sampler counts the
batches the training loop has taken; the training DataLoader hands that position to Lightning,
which saves it in every checkpoint, so ``--ckpt_path last`` resumes in the middle of an epoch
exactly where training stopped (dropout masks too: each step seeds them from the step number).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from nmt.corpus import PreparedCorpus
from nmt.errors import UserError
from nmt.models.translation import TranslationConfig, TranslationModel, label_smoothed_loss
from nmt.special_tokens import BOS_ID, EOS_ID, PAD_ID
from nmt.training.schedules import inverse_sqrt_schedule
from nmt.training.task import TEST, TRAIN, VAL, Task

# ---------------------------------------------------------------------------- batching


class LengthSortedSampler(Sampler[int]):
    """Pair indices sorted by padded length; with ``shuffle``, ties in a random order drawn from
    ``(seed, epoch)``. Lightning calls ``set_epoch`` on it (as ``batch_sampler.sampler``)."""

    def __init__(self, lengths: Sequence[int], shuffle: bool, seed: int = 0) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def __iter__(self) -> Iterator[int]:
        order = np.arange(len(self.lengths))
        if self.shuffle:
            order = self.rng().permutation(len(self.lengths))
        return iter(order[np.argsort(self.lengths[order], kind="stable")].tolist())

    def __len__(self) -> int:
        return len(self.lengths)


class TokenBatchSampler(Sampler[list[int]]):
    """Batches of about ``batch_tokens`` padded tokens from a LengthSortedSampler; this rank's
    share of them, resumable mid-epoch.

    With shuffling the batch order is drawn from ``(seed, epoch)`` and every rank gets the same
    number of batches (DDP steps in lockstep); without it batches stay sorted, for evaluation.
    ``position`` counts the batches of the current epoch the training loop has taken.
    """

    def __init__(
        self, sampler: LengthSortedSampler, batch_tokens: int, rank: int = 0, world_size: int = 1
    ) -> None:
        longest = int(sampler.lengths.max(initial=0))
        if batch_tokens < longest:
            raise UserError(
                f"batch_tokens {batch_tokens} is below the longest sentence pair ({longest} "
                "tokens); raise data.batch_tokens or lower data.max_length"
            )
        self.sampler = sampler
        self.batch_tokens = batch_tokens
        self.rank = rank
        self.world_size = world_size
        self.position = 0
        self._position_epoch = 0  # the epoch ``position`` counts in

    def epoch_batches(self) -> list[list[int]]:
        """This rank's batches of the sampler's current epoch, in order."""
        lengths = self.sampler.lengths
        batches: list[list[int]] = []
        batch: list[int] = []
        longest = 0
        for index in self.sampler:
            longest = max(longest, int(lengths[index]))
            if (len(batch) + 1) * longest > self.batch_tokens:
                batches.append(batch)
                batch, longest = [], int(lengths[index])
            batch.append(index)
        if batch:
            batches.append(batch)
        if not self.sampler.shuffle:
            return batches[self.rank :: self.world_size]
        batches = [batches[i] for i in self.sampler.rng().permutation(len(batches))]
        per_rank = len(batches) // self.world_size
        return batches[self.rank :: self.world_size][:per_rank]

    def _sync_position(self) -> None:
        if self._position_epoch != self.sampler.epoch:
            self._position_epoch, self.position = self.sampler.epoch, 0

    def advance(self) -> None:
        """Record that the training loop took the next batch."""
        self._sync_position()
        self.position += 1

    def __iter__(self) -> Iterator[list[int]]:
        self._sync_position()
        yield from self.epoch_batches()[self.position :]

    def __len__(self) -> int:
        return len(self.epoch_batches())

    def state_dict(self) -> dict[str, int]:
        self._sync_position()
        return {"epoch": self.sampler.epoch, "position": self.position, "seed": self.sampler.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.sampler.seed:
            raise UserError(
                f"the checkpoint was trained with data.seed {state['seed']}, "
                f"not {self.sampler.seed}"
            )
        self.sampler.set_epoch(state["epoch"])
        self._position_epoch, self.position = state["epoch"], state["position"]
        if self.position >= len(self):  # saved at the end of an epoch: go on with the next one
            self.sampler.set_epoch(state["epoch"] + 1)


@dataclass
class PairExample:
    src: list[int]
    tgt: list[int]
    index: int
    reference: str | None


class PairDataset(Dataset):
    """Sentence pairs of a prepared split, held as Python lists (Multi30k-sized corpora)."""

    def __init__(self, split, keep_references: bool) -> None:
        columns = split.select_columns(["src_ids", "tgt_ids", "tgt_text"]).to_dict()
        self.src: list[list[int]] = columns["src_ids"]
        self.tgt: list[list[int]] = columns["tgt_ids"]
        self.references: list[str] | None = columns["tgt_text"] if keep_references else None

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, index: int) -> PairExample:
        reference = self.references[index] if self.references is not None else None
        return PairExample(self.src[index], self.tgt[index], index, reference)

    def padded_lengths(self) -> list[int]:
        return [max(len(s), len(t)) + 1 for s, t in zip(self.src, self.tgt, strict=True)]


def _pad(rows: Sequence[Sequence[int]]) -> Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD_ID, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def collate_pairs(examples: list[PairExample]) -> dict[str, Any]:
    """Encoder input ids + EOS; decoder input BOS + ids; decoder output ids + EOS."""
    src = [[*e.src, EOS_ID] for e in examples]
    batch: dict[str, Any] = {
        "src_ids": _pad(src),
        "src_lengths": torch.tensor([len(s) for s in src], dtype=torch.long),
        "tgt_in": _pad([[BOS_ID, *e.tgt] for e in examples]),
        "tgt_out": _pad([[*e.tgt, EOS_ID] for e in examples]),
        "index": torch.tensor([e.index for e in examples], dtype=torch.long),
    }
    if examples[0].reference is not None:
        batch["references"] = [e.reference for e in examples]
    return batch


class ResumableDataLoader(DataLoader):
    """A DataLoader over a TokenBatchSampler whose position Lightning saves in checkpoints
    (with the fit loop's state) and restores before iterating, so a resumed epoch goes on
    where it stopped."""

    def state_dict(self) -> dict[str, int]:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.load_state_dict(state)


# ---------------------------------------------------------------------------- data module


class TranslationDataModule(L.LightningDataModule):
    """Token-batched splits of a prepared corpus (``nmt prep translation``).

    Args:
        corpus: directory of the prepared corpus, e.g. ``data/multi30k.en-de``.
        batch_tokens: padded tokens per training batch (per rank).
        eval_batch_tokens: padded tokens per validation/test batch.
        max_length: training pairs with a side longer than this (in wordpieces) are dropped.
        seed: seeds the batch order of every epoch.
        val_split, test_split: split names for validation and ``nmt test``.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        corpus: str,
        batch_tokens: int = 4096,
        eval_batch_tokens: int = 8192,
        max_length: int = 100,
        seed: int = 1,
        val_split: str = "val",
        test_split: str = "test_2016_flickr",
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.corpus_dir = corpus
        self.batch_tokens = batch_tokens
        self.eval_batch_tokens = eval_batch_tokens
        self.max_length = max_length
        self.seed = seed
        self.val_split = val_split
        self.test_split = test_split
        self.num_workers = num_workers
        self._train_sampler: TokenBatchSampler | None = None

    @cached_property
    def corpus(self) -> PreparedCorpus:
        return PreparedCorpus(self.corpus_dir)

    @property
    def wordpieces(self):
        return self.corpus.wordpieces

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(
        self, dataset: PairDataset, sampler: TokenBatchSampler, loader_class=DataLoader
    ) -> DataLoader:
        return loader_class(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_pairs,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        split = self.corpus.split("train")
        lengths = split.select_columns(["src_len", "tgt_len"]).to_dict()
        keep = [
            i
            for i, (s, t) in enumerate(zip(lengths["src_len"], lengths["tgt_len"], strict=True))
            if max(s, t) <= self.max_length
        ]
        if len(keep) < len(split):
            split = split.select(keep)
        dataset = PairDataset(split, keep_references=False)
        rank, world_size = self._rank_and_world()
        self._train_sampler = TokenBatchSampler(
            LengthSortedSampler(dataset.padded_lengths(), shuffle=True, seed=self.seed),
            self.batch_tokens,
            rank,
            world_size,
        )
        return self._loader(dataset, self._train_sampler, ResumableDataLoader)

    def _eval_loader(self, split_name: str) -> DataLoader:
        dataset = PairDataset(self.corpus.split(split_name), keep_references=True)
        rank, world_size = self._rank_and_world()
        sampler = TokenBatchSampler(
            LengthSortedSampler(dataset.padded_lengths(), shuffle=False),
            self.eval_batch_tokens,
            rank,
            world_size,
        )
        return self._loader(dataset, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_split)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Count the batches the training loop actually takes (the loader prefetches ahead).
        if self.trainer is not None and self.trainer.training and self._train_sampler is not None:
            self._train_sampler.advance()
        return batch


# ---------------------------------------------------------------------------- task


class TranslationTask(Task):
    """Trains a TranslationModel: label-smoothed loss, Adam, validation loss and greedy BLEU.

    Args:
        architecture: the model's configuration (saved in every checkpoint).
        learning_rate: Adam's peak learning rate (paper: 1e-3).
        warmup_steps: linear warm-up, then inverse-square-root decay (0: constant).
        betas: Adam's betas.
        label_smoothing: the training loss's label smoothing (validation loss is plain NLL).
        bleu_sentences: validation BLEU on the first this-many sentences of the validation
            split (by index), all of them when None; greedy decoding.
        max_decode_length: cap on generated wordpieces when decoding for BLEU.
        seed: with the global step, seeds each training step's dropout, so a resumed run draws
            the same masks as an uninterrupted one.
    """

    name = "translation"

    def __init__(
        self,
        architecture: TranslationConfig,
        learning_rate: float = 1e-3,
        warmup_steps: int = 0,
        betas: tuple[float, float] = (0.9, 0.999),
        label_smoothing: float = 0.1,
        bleu_sentences: int | None = None,
        max_decode_length: int = 100,
        seed: int = 1,
    ) -> None:
        super().__init__(TranslationModel(architecture))
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps
        self.betas = betas
        if not 0.0 <= label_smoothing < 1.0:
            raise UserError(f"label_smoothing must be in [0, 1), not {label_smoothing!r}")
        self.label_smoothing = label_smoothing
        self.bleu_sentences = bleu_sentences
        self.max_decode_length = max_decode_length
        self.seed = seed
        self._eval_sums: dict[str, Tensor] = {}

    # ------------------------------------------------------------ setup and checkpoints

    @property
    def _datamodule(self) -> TranslationDataModule:
        datamodule = self.trainer.datamodule
        if not isinstance(datamodule, TranslationDataModule):
            raise UserError("TranslationTask needs data: a TranslationDataModule")
        return datamodule

    def setup(self, stage: str) -> None:
        vocab_size = self._datamodule.wordpieces.vocab_size
        if vocab_size != self.model.config.vocab_size:
            raise UserError(
                f"model.init_args.architecture.vocab_size is {self.model.config.vocab_size} but "
                f"the corpus {self._datamodule.corpus_dir} has {vocab_size} wordpieces"
            )

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"wordpieces": self._datamodule.wordpieces.model_bytes}

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.learning_rate, betas=self.betas)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, inverse_sqrt_schedule(self.warmup_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ------------------------------------------------------------ training

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        step_seed = (self.seed * 1_000_003 + self.global_step) * self.trainer.world_size
        torch.manual_seed(step_seed + self.global_rank)

    def _loss(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.model(batch["src_ids"], batch["src_lengths"], batch["tgt_in"])
        return label_smoothed_loss(logits, batch["tgt_out"], self.label_smoothing)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss_sum, nll_sum, tokens = self._loss(batch)
        loss = loss_sum / tokens
        batch_size = batch["src_ids"].size(0)
        self.log(f"{TRAIN}/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log(f"{TRAIN}/nll", nll_sum / tokens, batch_size=batch_size)
        self.log(f"{TRAIN}/tokens", tokens.float(), reduce_fx="sum", batch_size=batch_size)
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=batch_size)
        return loss

    # ------------------------------------------------------------ validation and test

    def _eval_step(self, batch: dict[str, Any]) -> None:
        _, nll_sum, tokens = self._loss(batch)
        sums = {"nll": nll_sum.double(), "tokens": tokens.double()}
        keep = (
            torch.ones_like(batch["index"], dtype=torch.bool)
            if self.bleu_sentences is None
            else batch["index"] < self.bleu_sentences
        )
        if keep.any():
            rows = keep.nonzero().squeeze(1)
            hypotheses = self._greedy_translations(
                batch["src_ids"].index_select(0, rows), batch["src_lengths"].index_select(0, rows)
            )
            references = [batch["references"][i] for i in rows.tolist()]
            sums["bleu_stats"] = bleu_statistics(hypotheses, references).double()
        for name, value in sums.items():
            self._eval_sums[name] = self._eval_sums.get(name, 0) + value.cpu()

    def _greedy_translations(self, src_ids: Tensor, src_lengths: Tensor) -> list[str]:
        from nmt.decoding import DecodingOptions, beam_search

        options = DecodingOptions(beam_size=1, max_length=self.max_decode_length)
        hypotheses = beam_search(self.model, src_ids, src_lengths, options)
        return [self._datamodule.wordpieces.decode(nbest[0].tokens) for nbest in hypotheses]

    def _log_eval(self, prefix: str) -> None:
        # Every rank reduces the same three sums, even one that decoded nothing.
        zeros = {
            "nll": torch.zeros((), dtype=torch.float64),
            "tokens": torch.zeros((), dtype=torch.float64),
            "bleu_stats": torch.zeros(BLEU_STATISTICS, dtype=torch.float64),
        }
        sums = {**zeros, **self._eval_sums}
        self._eval_sums = {}
        reduced = {
            name: self.trainer.strategy.reduce(value.to(self.device), reduce_op="sum")
            for name, value in sums.items()
        }
        nll = reduced["nll"] / reduced["tokens"].clamp(min=1)
        self.log(f"{prefix}/loss", nll.float())
        self.log(f"{prefix}/ppl", nll.exp().float())
        bleu = bleu_from_statistics(reduced["bleu_stats"])
        self.log(f"{prefix}/bleu", bleu, prog_bar=True)
        if prefix == TEST:
            rank_zero_info(f"test BLEU {bleu:.2f} (greedy), sacreBLEU {bleu_signature()}")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_eval(VAL)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._log_eval(TEST)


# ---------------------------------------------------------------------------- BLEU

BLEU_ORDER = 4
BLEU_STATISTICS = 2 * BLEU_ORDER + 2  # n-gram matches and totals per order, hyp and ref length


def bleu_statistics(hypotheses: list[str], references: list[str]) -> Tensor:
    """sacreBLEU's sufficient statistics of a corpus part; sums of them give corpus BLEU."""
    from sacrebleu.metrics import BLEU

    score = BLEU().corpus_score(hypotheses, [references])
    return torch.tensor([*score.counts, *score.totals, score.sys_len, score.ref_len])


def bleu_from_statistics(stats: Tensor) -> float:
    """Corpus BLEU (sacreBLEU's default settings) from summed ``bleu_statistics``."""
    from sacrebleu.metrics import BLEU

    values = [int(v) for v in stats.tolist()]
    counts, totals = values[:BLEU_ORDER], values[BLEU_ORDER : 2 * BLEU_ORDER]
    sys_len, ref_len = values[2 * BLEU_ORDER :]
    return BLEU.compute_bleu(counts, totals, sys_len, ref_len).score


def bleu_signature() -> str:
    """The sacreBLEU signature of the BLEU that validation and test report (one reference)."""
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    metric.corpus_score(["."], [["."]])  # the signature names the number of references seen
    return str(metric.get_signature())
