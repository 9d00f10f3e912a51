"""Character language model: embedding, a recurrent stack of any cell type, softmax.

Ha, Dai & Le (2016), section 4.1: a HyperLSTM (or LSTM baseline) over characters, with dropout
on the input and output of the recurrent stack and recurrent dropout inside the cells. The
recurrent state is returned and accepted again, so truncated backpropagation through time can
carry it across consecutive batches.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from nmt.config_bounds import MAX_LAYERS, MAX_VOCAB, MAX_WIDTH, check_fraction, check_int
from nmt.errors import UserError
from nmt.modules.recurrent import RecurrentConfig, RecurrentStack, State
from nmt.special_tokens import RESERVED_PIECES, UNK_ID


class CharVocabulary:
    """Symbols by id: the reserved pieces of ``nmt.special_tokens`` first, then characters.

    Saved as a JSON list of strings, so a vocabulary file reads the same in every tool.
    """

    def __init__(self, symbols: Sequence[str]):
        if tuple(symbols[: len(RESERVED_PIECES)]) != RESERVED_PIECES:
            raise UserError(f"a character vocabulary must start with {list(RESERVED_PIECES)}")
        self.symbols = list(symbols)
        self.index = {symbol: i for i, symbol in enumerate(self.symbols)}
        if len(self.index) != len(self.symbols):
            raise UserError("a character vocabulary must not repeat a symbol")

    @classmethod
    def from_characters(cls, characters: set[str]) -> CharVocabulary:
        return cls([*RESERVED_PIECES, *sorted(characters)])

    @classmethod
    def load(cls, path: str | Path) -> CharVocabulary:
        try:
            symbols = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UserError(f"{path}: not a readable vocabulary JSON file ({error})") from None
        if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
            raise UserError(f"{path}: a vocabulary file holds a JSON list of strings")
        return cls(symbols)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.symbols, ensure_ascii=False) + "\n", "utf-8")

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, symbols: Sequence[str]) -> list[int]:
        """Ids of a sequence of symbols (a string is a sequence of characters); unknown -> UNK."""
        return [self.index.get(symbol, UNK_ID) for symbol in symbols]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.symbols[i] for i in ids if i >= len(RESERVED_PIECES))


@dataclass
class CharLMConfig:
    vocab_size: int = 54  # PTB: 4 reserved ids + 50 symbols
    embedding_size: int = 64
    num_layers: int = 1
    recurrent: RecurrentConfig = field(default_factory=RecurrentConfig)
    input_dropout: float = 0.0  # on the embeddings entering the recurrent stack
    output_dropout: float = 0.0  # on the stack's outputs before the softmax
    layer_dropout: float = 0.0  # between recurrent layers (num_layers > 1)

    def __post_init__(self) -> None:
        if not isinstance(self.recurrent, RecurrentConfig):
            raise ValueError(f"recurrent={self.recurrent!r} is invalid: need a mapping")
        check_int(self, "vocab_size", len(RESERVED_PIECES) + 1, MAX_VOCAB)
        check_int(self, "embedding_size", 1, MAX_WIDTH)
        check_int(self, "num_layers", 1, MAX_LAYERS)
        for name in ("input_dropout", "output_dropout", "layer_dropout"):
            check_fraction(self, name)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CharLMConfig:
        values = dict(values)
        recurrent = values.pop("recurrent", {})
        if isinstance(recurrent, dict):
            recurrent = RecurrentConfig.from_dict(recurrent)
        return cls(recurrent=recurrent, **values)


class CharLM(nn.Module):
    def __init__(self, config: CharLMConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.input_dropout = nn.Dropout(config.input_dropout)
        self.rnn = RecurrentStack(
            config.embedding_size,
            config.recurrent,
            config.num_layers,
            dropout=config.layer_dropout,
        )
        self.output_dropout = nn.Dropout(config.output_dropout)
        self.output = nn.Linear(self.rnn.output_size, config.vocab_size)

    def forward(self, ids: Tensor, states: list[State] | None = None) -> tuple[Tensor, list[State]]:
        """ids (B, T) -> logits (B, T, vocab) and the state after the last step.

        Passing the returned state back in continues the sequence exactly: two consecutive
        halves give the same logits as the whole.
        """
        x = self.input_dropout(self.embedding(ids))
        outputs, states = self.rnn(x, states=states)
        return self.output(self.output_dropout(outputs)), states

    @torch.no_grad()
    def sample(
        self,
        prefix: Sequence[int],
        length: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """Continue ``prefix`` (ids, at least one) by ``length`` ids drawn from the softmax at
        ``temperature`` (lower is more conservative; 0 picks the most likely id). Reserved ids
        are never drawn."""
        if not prefix:
            raise UserError("sampling needs a prefix of at least one symbol")
        if temperature < 0:
            raise UserError(f"temperature must be >= 0, got {temperature}")
        device = self.output.weight.device
        logits, states = self(torch.tensor([list(prefix)], device=device))
        drawn: list[int] = []
        for _ in range(length):
            last = logits[0, -1].float()
            last[: len(RESERVED_PIECES)] = float("-inf")
            if temperature == 0:
                next_id = int(last.argmax())
            else:
                probs = torch.softmax(last / temperature, dim=-1)
                next_id = int(torch.multinomial(probs, 1, generator=generator))
            drawn.append(next_id)
            logits, states = self(torch.tensor([[next_id]], device=device), states)
        return drawn
