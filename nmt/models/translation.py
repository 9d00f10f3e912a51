"""GNMT-style encoder-decoder with attention, built from recurrent layers of any cell type.

Layout (Wu et al. 2016, with the cells of ``nmt.modules.recurrent``):

    encoder:  embedding -> bidirectional layer -> unidirectional layers
              (residual connections from layer ``residual_from`` up)
    decoder:  embedding -> bottom layer -> attention over the top encoder outputs
              -> upper layers, each fed [below; context] (residual from ``residual_from`` up)
              -> output layer fed [top; context] -> (tied) softmax

The attention query is the bottom decoder layer's output. Without input feeding (the default)
training with teacher forcing runs every layer over the whole sequence at once (fast recurrence
kernels) and computes attention for all target steps in one batched product. With
``input_feeding`` the bottom layer also reads the previous step's attention context (GNMT as in
the TensorFlow NMT tutorial), so in training the bottom layer and the attention run step by step;
the upper layers still run over the whole sequence. Decoding runs the same layers one step at a
time through ``decode_step``; both paths compute the same function.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmt.config_bounds import (
    MAX_LAYERS,
    MAX_VOCAB,
    MAX_WIDTH,
    check_bool,
    check_fraction,
    check_int,
)
from nmt.modules.linear import linear
from nmt.modules.recurrent import RecurrentConfig, RecurrentLayer, RecurrentStack, State
from nmt.special_tokens import PAD_ID, RESERVED_PIECES

DecoderState = tuple[Tensor, ...]  # every layer's state tensors, flattened; all batch-first


@dataclass
class TranslationConfig:
    """Everything that defines a translation model; saved with every checkpoint and bundle."""

    vocab_size: int = 8000  # shared source/target wordpiece vocabulary
    embedding_size: int = 256  # word embeddings (source, target, and the tied output layer)
    encoder_layers: int = 2  # the bottom one bidirectional
    decoder_layers: int = 2
    recurrent: RecurrentConfig = field(default_factory=RecurrentConfig)  # every layer's cell
    dropout: float = 0.2  # on embeddings, between layers and before the softmax
    tie_embeddings: bool = True  # decoder input embedding = output projection
    residual_from: int = 2  # 0-based index of the first layer with a residual connection
    # Multiply input embeddings by sqrt(embedding_size): rows are initialised (and tied to the
    # output layer) at about unit norm, which leaves components of ~embedding_size**-0.5; an
    # LSTM without layer norm then starts with states near 0.01 and its attention near uniform.
    scale_embeddings: bool = False
    input_feeding: bool = False  # bottom decoder layer reads [embedding; previous context]

    def __post_init__(self) -> None:
        if isinstance(self.recurrent, dict):
            self.recurrent = RecurrentConfig.from_dict(self.recurrent)
        if not isinstance(self.recurrent, RecurrentConfig):
            raise ValueError(f"recurrent={self.recurrent!r} is invalid: need a mapping")
        check_int(self, "vocab_size", len(RESERVED_PIECES) + 1, MAX_VOCAB)
        check_int(self, "embedding_size", 1, MAX_WIDTH)
        check_int(self, "encoder_layers", 1, MAX_LAYERS)
        check_int(self, "decoder_layers", 1, MAX_LAYERS)
        check_int(self, "residual_from", 0, MAX_LAYERS)
        check_fraction(self, "dropout")
        check_bool(self, "tie_embeddings")
        check_bool(self, "scale_embeddings")
        check_bool(self, "input_feeding")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TranslationConfig:
        """Also reads configs saved before two moves: ``hidden_size`` (now only
        ``recurrent.hidden_size``) and ``label_smoothing`` (now the training task's)."""
        data = dict(data)
        data.pop("label_smoothing", None)
        recurrent = data.get("recurrent", {})
        if "hidden_size" in data and isinstance(recurrent, dict):
            data["recurrent"] = {**recurrent, "hidden_size": data.pop("hidden_size")}
        return cls(**data)


@dataclass
class EncoderOutput:
    """What the decoder attends to; rows follow the batch (or the beam after index_select)."""

    memory: Tensor  # (B, S, D) top encoder outputs
    mask: Tensor  # (B, S) bool, True at real source tokens

    def index_select(self, index: Tensor) -> EncoderOutput:
        return EncoderOutput(self.memory.index_select(0, index), self.mask.index_select(0, index))


class Attention(nn.Module):
    """Scaled bilinear (Luong "general") attention: score(q, m) = (W q) . m / sqrt(D).

    The query is projected rather than the memory, so one decoder step costs one small product.
    """

    def __init__(self, query_size: int, memory_size: int) -> None:
        super().__init__()
        self.query = nn.Linear(query_size, memory_size, bias=False)
        self.scale = 1.0 / math.sqrt(memory_size)

    def forward(self, query: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """query (B, T, Q), memory (B, S, D), mask (B, S) -> context (B, T, D), weights (B,T,S)."""
        scores = torch.bmm(linear(self.query, query), memory.transpose(1, 2)) * self.scale
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return torch.bmm(weights, memory), weights


class TranslationModel(nn.Module):
    """GNMT encoder-decoder; ``forward`` for teacher forcing, the rest for beam search."""

    def __init__(self, config: TranslationConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        hidden = c.recurrent.hidden_size

        self.src_embedding = nn.Embedding(c.vocab_size, c.embedding_size, padding_idx=PAD_ID)
        self.encoder = RecurrentStack(
            c.embedding_size,
            c.recurrent,
            c.encoder_layers,
            bidirectional_bottom=True,
            residual_from=c.residual_from,
            dropout=c.dropout,
        )
        memory_size = self.encoder.output_size

        self.tgt_embedding = nn.Embedding(c.vocab_size, c.embedding_size, padding_idx=PAD_ID)
        self.feed_size = memory_size if c.input_feeding else 0
        self.decoder_layers = nn.ModuleList(
            [RecurrentLayer(c.embedding_size + self.feed_size, c.recurrent)]
        )
        self.decoder_layers.extend(
            RecurrentLayer(hidden + memory_size, c.recurrent) for _ in range(c.decoder_layers - 1)
        )
        self.attention = Attention(hidden, memory_size)
        self.pre_output = nn.Linear(hidden + memory_size, c.embedding_size)
        self.output = nn.Linear(c.embedding_size, c.vocab_size)
        if c.tie_embeddings:
            self.output.weight = self.tgt_embedding.weight
        self.dropout = nn.Dropout(c.dropout)
        self.embedding_scale = math.sqrt(c.embedding_size) if c.scale_embeddings else 1.0
        # How many tensors each decoder layer's state has (to flatten and split DecoderState);
        # with input feeding the previous context is one more tensor at the end.
        self._state_sizes = [len(layer.initial_state(1)) for layer in self.decoder_layers]
        self._init_embeddings()

    def _init_embeddings(self) -> None:
        # Rows of about unit norm keep the tied output logits of order 1 at the start.
        std = self.config.embedding_size**-0.5
        for embedding in (self.src_embedding, self.tgt_embedding):
            nn.init.normal_(embedding.weight, std=std)
            with torch.no_grad():
                embedding.weight[PAD_ID].zero_()
        nn.init.zeros_(self.output.bias)

    # ---------------------------------------------------------------- encoder

    def encode(self, src_ids: Tensor, src_lengths: Tensor) -> EncoderOutput:
        """src_ids (B, S) wordpieces + EOS, padded with PAD; src_lengths (B,)."""
        embedded = self.dropout(self.src_embedding(src_ids) * self.embedding_scale)
        memory, _ = self.encoder(embedded, src_lengths)
        positions = torch.arange(src_ids.size(1), device=src_ids.device)
        mask = positions.unsqueeze(0) < src_lengths.to(src_ids.device).unsqueeze(1)
        return EncoderOutput(memory, mask)

    # ---------------------------------------------------------------- decoder

    def initial_decoder_state(self, encoder_output: EncoderOutput) -> DecoderState:
        """Zero state for every decoder layer (GNMT does not bridge encoder states), and a zero
        context to feed the first step when input feeding is on."""
        memory = encoder_output.memory
        batch = memory.size(0)
        layer_states = tuple(
            tensor
            for layer in self.decoder_layers
            for tensor in layer.initial_state(batch, device=memory.device, dtype=memory.dtype)
        )
        if not self.config.input_feeding:
            return layer_states
        return (*layer_states, memory.new_zeros(batch, self.feed_size))

    def _split_state(self, state: DecoderState) -> tuple[list[State], Tensor | None]:
        """Flat DecoderState -> (each layer's state, the context to feed or None)."""
        states, start = [], 0
        for size in self._state_sizes:
            states.append(tuple(state[start : start + size]))
            start += size
        return states, (state[start] if self.config.input_feeding else None)

    def _bottom_with_input_feeding(
        self, embedded: Tensor, state: State, feed: Tensor, encoder_output: EncoderOutput
    ) -> tuple[Tensor, Tensor]:
        """Teacher forcing through the bottom layer one step at a time, each step reading the
        previous step's context: embedded (B, T, E) -> bottom outputs and contexts (B, T, *)."""
        bottom_layer = self.decoder_layers[0]
        outputs, contexts = [], []
        for x in embedded.unbind(1):
            hidden, state = bottom_layer.step(torch.cat([x, feed], dim=-1), state)
            context, _ = self.attention(
                hidden.unsqueeze(1), encoder_output.memory, encoder_output.mask
            )
            feed = context.squeeze(1)
            outputs.append(hidden)
            contexts.append(feed)
        return torch.stack(outputs, 1), torch.stack(contexts, 1)

    def _upper_layers_and_output(
        self, bottom: Tensor, context: Tensor, layer_call, states: list[State]
    ) -> tuple[Tensor, list[State]]:
        """Shared by both decoder paths: upper layers fed [below; context], then logits."""
        hidden, new_states = bottom, []
        for index, layer in enumerate(self.decoder_layers[1:], start=1):
            output, layer_state = layer_call(
                layer, torch.cat([self.dropout(hidden), context], dim=-1), states[index]
            )
            hidden = output + hidden if index >= self.config.residual_from else output
            new_states.append(layer_state)
        pre_output = torch.tanh(
            linear(self.pre_output, torch.cat([self.dropout(hidden), context], -1))
        )
        return linear(self.output, self.dropout(pre_output)), new_states

    def forward(self, src_ids: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: tgt_in (B, T) = BOS + target ids, padded -> logits (B, T, V)."""
        encoder_output = self.encode(src_ids, src_lengths)
        states, feed = self._split_state(self.initial_decoder_state(encoder_output))
        embedded = self.dropout(self.tgt_embedding(tgt_in) * self.embedding_scale)
        if feed is not None:
            bottom, context = self._bottom_with_input_feeding(
                embedded, states[0], feed, encoder_output
            )
        else:
            bottom, _ = self.decoder_layers[0](embedded, state=states[0])
            context, _ = self.attention(bottom, encoder_output.memory, encoder_output.mask)
        logits, _ = self._upper_layers_and_output(
            bottom, context, lambda layer, x, s: layer(x, state=s), states
        )
        return logits

    def decode_step(
        self, prev_tokens: Tensor, state: DecoderState, encoder_output: EncoderOutput
    ) -> tuple[Tensor, Tensor, DecoderState]:
        """One target step: prev_tokens (B,) -> log_probs (B, V) float32, attention (B, S),
        new state."""
        states, feed = self._split_state(state)
        embedded = self.dropout(self.tgt_embedding(prev_tokens) * self.embedding_scale)
        if feed is not None:
            embedded = torch.cat([embedded, feed], dim=-1)
        bottom, bottom_state = self.decoder_layers[0].step(embedded, states[0])
        context, weights = self.attention(
            bottom.unsqueeze(1), encoder_output.memory, encoder_output.mask
        )
        context = context.squeeze(1)
        logits, upper_states = self._upper_layers_and_output(
            bottom, context, lambda layer, x, s: layer.step(x, s), states
        )
        new_state = tuple(t for layer_state in [bottom_state, *upper_states] for t in layer_state)
        if feed is not None:
            new_state = (*new_state, context)
        return F.log_softmax(logits.float(), dim=-1), weights.squeeze(1), new_state


def label_smoothed_loss(
    logits: Tensor, targets: Tensor, smoothing: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Summed label-smoothed cross entropy and summed NLL over non-PAD targets, and their count.

    logits (B, T, V), targets (B, T). Sums (not means) so that callers can normalise by tokens
    across batches and ranks.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    keep = targets != PAD_ID
    nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    uniform = -log_probs.mean(dim=-1)  # cross entropy with the uniform distribution
    loss = (1.0 - smoothing) * nll + smoothing * uniform
    return loss[keep].sum(), nll[keep].sum().detach(), keep.sum()
