"""Top-k selection: each sentence keeps its best extensions, whatever else is in the batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Selection:
    """The chosen extensions, sentence by sentence, best first within a sentence."""

    group: Tensor  # (N,) index of the sentence among the active ones
    row: Tensor  # (N,) the live row (hypothesis) being extended
    token: Tensor  # (N,) the appended token
    log_prob: Tensor  # (N,) cumulative log-probability after the extension


def select_top_k(
    log_probs: Tensor,
    row_log_prob: Tensor,
    row_group: Tensor,
    row_slot: Tensor,
    budgets: Tensor,
    beam_size: int,
) -> Selection:
    """Pick, for every active sentence g, its ``budgets[g]`` best extensions.

    log_probs: (R, V) next-token log-probabilities of every live row, -inf where forbidden
    (never picked); row_log_prob: (R,) each row's log-probability so far; row_group: (R,)
    sentence of each row (rows sorted by group); row_slot: (R,) rank of the row within its
    sentence (< beam_size); budgets: (G,) how many extensions each sentence may keep
    (<= beam_size).

    A sentence's best k extensions are among the best k tokens of each of its rows, so each row
    is cut to its k best first; then each sentence chooses in its own block of rows, so the
    choice and its tie-breaking depend on that sentence's rows alone.
    """
    num_groups, device = budgets.shape[0], log_probs.device
    per_row = min(beam_size, log_probs.shape[1])
    row_best, row_tokens = log_probs.topk(per_row, dim=1)  # (R, per_row)
    row_best = row_best + row_log_prob[:, None]
    blocks = row_best.new_full((num_groups, beam_size, per_row), float("-inf"))
    blocks[row_group, row_slot] = row_best
    top_log_probs, top_index = blocks.view(num_groups, -1).topk(beam_size, dim=1)

    rank = torch.arange(beam_size, device=device)
    keep = (rank[None, :] < budgets[:, None]) & (top_log_probs > float("-inf"))
    slot_to_row = torch.full((num_groups, beam_size), -1, dtype=torch.long, device=device)
    slot_to_row[row_group, row_slot] = torch.arange(log_probs.shape[0], device=device)

    group = torch.arange(num_groups, device=device)[:, None].expand_as(keep)[keep]
    top_index = top_index[keep]
    row = slot_to_row[group, top_index // per_row]
    return Selection(
        group=group,
        row=row,
        token=row_tokens[row, top_index % per_row],
        log_prob=top_log_probs[keep],
    )
