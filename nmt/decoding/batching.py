"""Text in, hypotheses out: wordpiece encoding, length-sorted batches, original order restored."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from nmt.decoding.beam_search import beam_search
from nmt.decoding.model_interface import Decodable
from nmt.decoding.options import DecodingOptions, Hypothesis
from nmt.special_tokens import EOS_ID, PAD_ID


def pad_sources(
    sources: Sequence[Sequence[int]], device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Encoder inputs (wordpieces + EOS), padded with PAD: src_ids (B, S), src_lengths (B,)."""
    lengths = [len(ids) + 1 for ids in sources]
    src_ids = torch.full((len(sources), max(lengths)), PAD_ID, dtype=torch.long)
    for row, ids in enumerate(sources):
        src_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        src_ids[row, len(ids)] = EOS_ID
    return src_ids.to(device), torch.tensor(lengths, device=device)


def model_device(model: Decodable) -> torch.device:
    if isinstance(model, nn.Module):
        for parameter in model.parameters():
            return parameter.device
    return torch.device("cpu")


def translate_ids(
    model: Decodable,
    sources: Sequence[Sequence[int]],
    options: DecodingOptions,
    batch_size: int,
    progress: Callable[[int], object] | None = None,
) -> list[list[Hypothesis]]:
    """Decode wordpiece sequences in batches of similar length; results in input order.

    Sorting by length only saves padding: a sentence's output does not depend on its batch.
    ``progress(n)`` is called after each batch with the number of sentences it held.
    """
    device = model_device(model)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    results: list[list[Hypothesis]] = [[] for _ in sources]
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        src_ids, src_lengths = pad_sources([sources[i] for i in batch], device)
        for index, hypotheses in zip(
            batch, beam_search(model, src_ids, src_lengths, options), strict=True
        ):
            results[index] = hypotheses
        if progress is not None:
            progress(len(batch))
    return results


def translate_texts(
    model: Decodable,
    wordpieces,
    texts: list[str],
    options: DecodingOptions,
    batch_size: int,
    progress: Callable[[int], object] | None = None,
) -> list[list[Hypothesis]]:
    """Translate raw sentences; ``wordpieces`` (nmt.wordpieces.Wordpieces) encodes them and
    ``wordpieces.decode(hypothesis.tokens)`` gives the detokenised text."""
    sources = [wordpieces.encode(text) for text in texts]
    return translate_ids(model, sources, options, batch_size, progress)
