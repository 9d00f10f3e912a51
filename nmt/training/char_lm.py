"""Character language modelling: a LightningModule and its DataModule.

Truncated backpropagation through time: a split is cut into ``batch_size`` contiguous streams,
one per batch row, and read in consecutive windows of ``seq_len`` symbols. The recurrent state
after one window is the initial state of the next (detached, so gradients stop at the window
edge), and starts from zero at the beginning of every epoch.

Evaluation scores every symbol of a split after the first exactly once: the streams overlap by
one symbol (the last input of a stream's target is the first input of the next stream), the
last stream is padded, and padded targets are ignored. bits per character = the mean cross
entropy over those symbols / ln 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from nmt.checkpoints import CHECKPOINT_KEY
from nmt.errors import UserError
from nmt.models.char_lm import CharLM, CharLMConfig, CharVocabulary
from nmt.special_tokens import PAD_ID
from nmt.training.schedules import cosine_schedule
from nmt.training.task import TEST, TRAIN, VAL, Task

SPLITS = ("train", "valid", "test")
IGNORE_INDEX = -100  # targets that are padding: no loss, not counted in bpc


def load_char_split(directory: str | Path, split: str) -> np.ndarray:
    """Ids of a split written by `nmt prep chars`, memory-mapped."""
    path = Path(directory) / f"{split}.npy"
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if not path.is_file():
        raise UserError(f"{path}: no prepared character split (run `nmt prep chars`)")
    return np.load(path, mmap_mode="r")


class StreamWindows(IterableDataset):
    """Consecutive (inputs, targets) windows, each (streams, seq_len), over a split.

    Row b of every window continues row b of the previous window. Under data parallelism each
    process reads its own ``streams`` rows of ``streams * num_shards`` streams, so the rows stay
    contiguous per process (an iterable dataset, so Lightning inserts no sampler).
    """

    def __init__(
        self, ids: np.ndarray, streams: int, seq_len: int, shard: int = 0, num_shards: int = 1
    ):
        total_streams = streams * num_shards
        targets = len(ids) - 1
        if targets < total_streams:
            raise UserError(
                f"a split of {len(ids)} symbols is too short for {total_streams} streams"
            )
        per_stream = math.ceil(targets / total_streams)
        inputs = np.full(total_streams * per_stream, PAD_ID, dtype=np.int64)
        outputs = np.full(total_streams * per_stream, IGNORE_INDEX, dtype=np.int64)
        inputs[:targets] = ids[:-1]
        outputs[:targets] = ids[1:]
        rows = slice(shard * streams, (shard + 1) * streams)
        self.inputs = torch.from_numpy(inputs.reshape(total_streams, per_stream)[rows].copy())
        self.targets = torch.from_numpy(outputs.reshape(total_streams, per_stream)[rows].copy())
        self.seq_len = seq_len

    def __len__(self) -> int:
        return math.ceil(self.inputs.shape[1] / self.seq_len)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, self.inputs.shape[1], self.seq_len):
            window = slice(start, start + self.seq_len)
            yield self.inputs[:, window], self.targets[:, window]


class CharLMDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_dir: str = "data/ptb_char",
        batch_size: int = 128,
        seq_len: int = 100,
        eval_batch_size: int = 64,
        eval_seq_len: int = 200,
    ):
        """``batch_size`` streams of ``seq_len`` symbols per training window (per process);
        evaluation uses its own sizes (larger windows cost no accuracy, only memory)."""
        super().__init__()
        self.data_dir = data_dir
        self.batch_size, self.seq_len = batch_size, seq_len
        self.eval_batch_size, self.eval_seq_len = eval_batch_size, eval_seq_len
        self.vocabulary = CharVocabulary.load(Path(data_dir) / "vocab.json")

    def _windows(self, split: str, streams: int, seq_len: int) -> StreamWindows:
        trainer = self.trainer
        shard, shards = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        ids = load_char_split(self.data_dir, split)
        return StreamWindows(ids, streams, seq_len, shard, shards)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._windows("train", self.batch_size, self.seq_len), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        windows = self._windows("valid", self.eval_batch_size, self.eval_seq_len)
        return DataLoader(windows, batch_size=None)

    def test_dataloader(self) -> DataLoader:
        windows = self._windows("test", self.eval_batch_size, self.eval_seq_len)
        return DataLoader(windows, batch_size=None)


def detach_states(states: list[tuple[Tensor, ...]]) -> list[tuple[Tensor, ...]]:
    return [tuple(t.detach() for t in state) for state in states]


class CharLMTask(Task):
    """Next-character cross entropy with the state carried across consecutive windows; logs
    bits per character (``<split>/bpc``), exact over the whole split at the end of an epoch.

    Args:
        architecture: the model's configuration (saved in every checkpoint).
        learning_rate: Adam's (peak) learning rate.
        lr_schedule: ``constant``, or ``cosine``: annealed to ``final_learning_rate`` over the
            run's training steps (``trainer.max_steps``, else ``max_epochs`` epochs).
        final_learning_rate: where the cosine schedule ends.
    """

    name = "char_lm"

    def __init__(
        self,
        architecture: CharLMConfig | None = None,
        learning_rate: float = 1e-3,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        final_learning_rate: float = 0.0,
    ):
        if lr_schedule not in ("constant", "cosine"):
            raise UserError(f"lr_schedule must be constant or cosine, not {lr_schedule!r}")
        super().__init__(CharLM(architecture or CharLMConfig()))
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.final_learning_rate = final_learning_rate
        self.vocabulary: list[str] | None = None
        self._states: dict[str, list] = {}  # carried state per split

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self.trainer else None
        vocabulary = getattr(datamodule, "vocabulary", None)
        if vocabulary is None:
            return
        if len(vocabulary) != self.model.config.vocab_size:
            raise UserError(
                f"model.vocab_size is {self.model.config.vocab_size} but the vocabulary of "
                f"{datamodule.data_dir} has {len(vocabulary)} symbols"
            )
        self.vocabulary = vocabulary.symbols

    def forward(self, ids: Tensor, states=None):
        return self.model(ids, states)

    def _step(self, batch: tuple[Tensor, Tensor], split: str) -> Tensor:
        inputs, targets = batch
        logits, states = self.model(inputs, self._states.get(split))
        self._states[split] = detach_states(states)
        count = int((targets != IGNORE_INDEX).sum())
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX
        )
        if count:  # weighted by the symbols it scores, so the epoch value is exact
            self.log(
                f"{split}/bpc",
                loss / math.log(2),
                prog_bar=True,
                batch_size=count,
                on_step=split == TRAIN,
                on_epoch=True,
                sync_dist=split != TRAIN,
            )
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, TRAIN)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, VAL)

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, TEST)

    def on_train_epoch_start(self) -> None:
        self._states.pop(TRAIN, None)

    def on_validation_epoch_start(self) -> None:
        self._states.pop(VAL, None)

    def on_test_epoch_start(self) -> None:
        self._states.pop(TEST, None)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.learning_rate)
        if self.lr_schedule == "constant":
            return optimizer
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise UserError("lr_schedule cosine needs trainer.max_steps or trainer.max_epochs")
        factor = cosine_schedule(int(total_steps), self.final_learning_rate / self.learning_rate)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.vocabulary = checkpoint.get(CHECKPOINT_KEY, {}).get("vocabulary")
