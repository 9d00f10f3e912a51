"""The GNMT translation model (nmt/models/translation.py) and plain-torch checkpoint loading.

Tiny models on random token ids: the properties hold for any input. Training on real sentence
pairs is in tests/test_training.py.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from nmt.models.translation import (
    TranslationConfig,
    TranslationModel,
    label_smoothed_loss,
)
from nmt.modules.recurrent import CELL_TYPES, RecurrentConfig
from nmt.special_tokens import BOS_ID, EOS_ID, PAD_ID

VOCAB = 40


def tiny_config(cell: str = "ln_hyperlstm", **overrides) -> TranslationConfig:
    settings = dict(
        vocab_size=VOCAB,
        embedding_size=12,
        encoder_layers=3,  # bidirectional, unidirectional, residual
        decoder_layers=3,  # bottom, upper, upper with residual
        dropout=0.0,
        recurrent=RecurrentConfig(cell=cell, hidden_size=16, hyper_size=8, n_z=4),
    )
    settings.update(overrides)
    return TranslationConfig(**settings)


def random_batch(generator: torch.Generator, batch: int = 4, src_len: int = 7, tgt_len: int = 6):
    """Padded source (ending in EOS) with unequal lengths, and a target decoder input."""
    lengths = torch.tensor([src_len, src_len - 2, 3, 2][:batch])
    src = torch.randint(4, VOCAB, (batch, src_len), generator=generator)
    for row, length in enumerate(lengths.tolist()):
        src[row, length - 1] = EOS_ID
        src[row, length:] = PAD_ID
    tgt_in = torch.randint(4, VOCAB, (batch, tgt_len), generator=generator)
    tgt_in[:, 0] = BOS_ID
    return src, lengths, tgt_in


@pytest.mark.parametrize("input_feeding", [False, True])
@pytest.mark.parametrize("cell", CELL_TYPES)
def test_decode_steps_equal_teacher_forced_forward(cell: str, input_feeding: bool) -> None:
    torch.manual_seed(0)
    model = TranslationModel(tiny_config(cell, input_feeding=input_feeding)).eval()
    src, lengths, tgt_in = random_batch(torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = F.log_softmax(model(src, lengths, tgt_in), dim=-1)
        encoder_output = model.encode(src, lengths)
        state = model.initial_decoder_state(encoder_output)
        steps = []
        for t in range(tgt_in.size(1)):
            log_probs, attention, state = model.decode_step(tgt_in[:, t], state, encoder_output)
            assert log_probs.dtype == torch.float32
            assert torch.allclose(attention.sum(-1), torch.ones(len(src)), atol=1e-6)
            assert (attention[~encoder_output.mask] == 0).all()  # no weight on padding
            steps.append(log_probs)
    torch.testing.assert_close(torch.stack(steps, 1), expected, atol=1e-5, rtol=1e-5)


def test_input_feeding_feeds_the_previous_context() -> None:
    """With input feeding the state carries the last attention context, and the next step
    reads it: replacing it changes the next step's output; without feeding there is none."""
    torch.manual_seed(0)
    model = TranslationModel(tiny_config(input_feeding=True)).eval()
    src, lengths, tgt_in = random_batch(torch.Generator().manual_seed(4))
    with torch.no_grad():
        encoder_output = model.encode(src, lengths)
        state = model.initial_decoder_state(encoder_output)
        assert not state[-1].any()  # the first step is fed a zero context
        _, attention, state = model.decode_step(tgt_in[:, 0], state, encoder_output)
        expected_context = torch.bmm(attention.unsqueeze(1), encoder_output.memory).squeeze(1)
        torch.testing.assert_close(state[-1], expected_context)
        fed, _, _ = model.decode_step(tgt_in[:, 1], state, encoder_output)
        unfed, _, _ = model.decode_step(
            tgt_in[:, 1], (*state[:-1], torch.zeros_like(state[-1])), encoder_output
        )
    assert not torch.allclose(fed, unfed)
    plain = TranslationModel(tiny_config(input_feeding=False))
    assert len(plain.initial_decoder_state(encoder_output)) == len(state) - 1


def test_scaled_embeddings_enter_the_encoder_times_sqrt_size() -> None:
    torch.manual_seed(0)
    config = tiny_config(scale_embeddings=True)
    model = TranslationModel(config).eval()
    src, lengths, _ = random_batch(torch.Generator().manual_seed(5))
    seen = []
    model.encoder.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    with torch.no_grad():
        model.encode(src, lengths)
    expected = model.src_embedding(src) * config.embedding_size**0.5
    torch.testing.assert_close(seen[0], expected)


def test_reordered_state_follows_its_rows() -> None:
    """Beam search moves rows with index_select; a moved row computes what it did before."""
    torch.manual_seed(0)
    model = TranslationModel(tiny_config(input_feeding=True)).eval()
    src, lengths, tgt_in = random_batch(torch.Generator().manual_seed(2))
    index = torch.tensor([2, 2, 0, 3, 1])
    with torch.no_grad():
        encoder_output = model.encode(src, lengths)
        state = model.initial_decoder_state(encoder_output)
        _, _, state = model.decode_step(tgt_in[:, 0], state, encoder_output)
        log_probs, attention, _ = model.decode_step(tgt_in[:, 1], state, encoder_output)
        moved = tuple(t.index_select(0, index) for t in state)
        moved_log_probs, moved_attention, _ = model.decode_step(
            tgt_in[index, 1], moved, encoder_output.index_select(index)
        )
    torch.testing.assert_close(moved_log_probs, log_probs[index])
    torch.testing.assert_close(moved_attention, attention[index])


def test_padding_does_not_change_a_sentence() -> None:
    """A sentence's logits are the same alone and in a padded batch with longer sentences."""
    torch.manual_seed(0)
    model = TranslationModel(tiny_config()).eval()
    src, lengths, tgt_in = random_batch(torch.Generator().manual_seed(3))
    row = 2  # source length 3 in a batch padded to 7
    with torch.no_grad():
        batched = model(src, lengths, tgt_in)[row]
        alone = model(src[row : row + 1, :3], lengths[row : row + 1], tgt_in[row : row + 1])[0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_gnmt_layout() -> None:
    config = tiny_config(encoder_layers=3, decoder_layers=4)
    model = TranslationModel(config)
    hidden, embedding = config.recurrent.hidden_size, config.embedding_size
    encoder_layers = model.encoder.layers
    assert [layer.bidirectional for layer in encoder_layers] == [True, False, False]
    assert model.encoder.output_size == hidden
    # bottom decoder layer reads embeddings; every upper layer reads [below; context]
    assert model.decoder_layers[0].input_size == embedding
    assert [layer.input_size for layer in model.decoder_layers[1:]] == [2 * hidden] * 3
    assert model.pre_output.in_features == 2 * hidden
    # a 1-layer encoder attends over the bidirectional outputs
    wide = TranslationModel(tiny_config(encoder_layers=1, decoder_layers=2))
    assert wide.decoder_layers[1].input_size == 3 * hidden


def test_residual_connection_from_the_third_decoder_layer() -> None:
    """A zeroed residual layer passes its input on: 3 decoder layers behave as 2."""
    src, lengths, tgt_in = random_batch(torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    deep = TranslationModel(tiny_config("lstm", decoder_layers=3, residual_from=2)).eval()
    with torch.no_grad():
        for parameter in deep.decoder_layers[2].parameters():
            parameter.zero_()  # g = tanh(0) = 0 keeps c = 0, so the layer outputs h = 0
    shallow = TranslationModel(tiny_config("lstm", decoder_layers=2)).eval()
    state = {k: v for k, v in deep.state_dict().items() if not k.startswith("decoder_layers.2.")}
    shallow.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(deep(src, lengths, tgt_in), shallow(src, lengths, tgt_in))
        without_residual = TranslationModel(tiny_config("lstm", residual_from=3)).eval()
        without_residual.load_state_dict(deep.state_dict())
        plain = without_residual(src, lengths, tgt_in)
        assert not torch.allclose(plain, deep(src, lengths, tgt_in))


def test_tied_embeddings() -> None:
    tied = TranslationModel(tiny_config(tie_embeddings=True))
    untied = TranslationModel(tiny_config(tie_embeddings=False))
    assert tied.output.weight is tied.tgt_embedding.weight
    assert untied.output.weight is not untied.tgt_embedding.weight
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) - count(tied) == VOCAB * 12


def test_switching_the_cell_changes_only_the_recurrent_layers() -> None:
    shapes = {}
    for cell in CELL_TYPES:
        model = TranslationModel(tiny_config(cell))
        shapes[cell] = {
            name: tuple(p.shape)
            for name, p in model.state_dict().items()
            if not name.startswith(("encoder.", "decoder_layers."))
        }
    assert all(s == shapes["lstm"] for s in shapes.values())
    assert set(shapes["lstm"]) >= {"src_embedding.weight", "attention.query.weight"}


def test_label_smoothed_loss_matches_torch() -> None:
    """Against torch's own label-smoothed cross entropy (mean over non-pad targets)."""
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 5, VOCAB, generator=generator, dtype=torch.float64)
    targets = torch.randint(4, VOCAB, (3, 5), generator=generator)
    targets[0, 3:] = PAD_ID
    targets[2, 1:] = PAD_ID
    loss, nll, tokens = label_smoothed_loss(logits, targets, smoothing=0.1)
    flat_logits, flat_targets = logits.flatten(0, 1), targets.flatten()
    reference = F.cross_entropy(flat_logits, flat_targets, ignore_index=PAD_ID, label_smoothing=0.1)
    reference_nll = F.cross_entropy(flat_logits, flat_targets, ignore_index=PAD_ID)
    assert tokens.item() == 15 - 2 - 4
    torch.testing.assert_close(loss / tokens, reference.float())
    torch.testing.assert_close(nll / tokens, reference_nll.float())


def test_config_round_trip() -> None:
    config = tiny_config("hyperlstm", tie_embeddings=False)
    data = json.loads(json.dumps(config.to_dict()))
    assert TranslationConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="decoder_layers=0 is invalid"):
        tiny_config(decoder_layers=0)


def test_configs_saved_before_the_renames_read_as_today() -> None:
    """Checkpoints and bundles keep their config as a dict: the hidden size once also sat at the
    top, N_z was called embedding_size, and label smoothing was a model setting."""
    legacy = {
        "vocab_size": VOCAB, "embedding_size": 12, "hidden_size": 20, "label_smoothing": 0.1,
        "recurrent": {"cell": "ln_hyperlstm", "hidden_size": 20, "hyper_size": 8,
                      "embedding_size": 4},
    }  # fmt: skip
    config = TranslationConfig.from_dict(legacy)
    recurrent = config.recurrent
    assert (recurrent.hidden_size, recurrent.n_z, config.embedding_size) == (20, 4, 12)
    assert not hasattr(config, "label_smoothing")
    with pytest.raises(ValueError, match="embedding_size and n_z are the same setting"):
        RecurrentConfig.from_dict({"embedding_size": 4, "n_z": 4})


def test_scaled_embeddings_let_a_plain_lstm_attention_learn() -> None:
    """At the Multi30k sizes a plain LSTM fed unit-norm embeddings starts with states near 0.01,
    and its attention gradient is far below Adam's epsilon; scaled inputs lift it >100-fold."""

    def attention_gradient(scale_embeddings: bool) -> float:
        torch.manual_seed(0)
        config = TranslationConfig(
            vocab_size=1000, embedding_size=256, dropout=0.0, scale_embeddings=scale_embeddings,
            recurrent=RecurrentConfig(cell="lstm", hidden_size=304),
        )  # fmt: skip
        model = TranslationModel(config)
        src, tgt = torch.randint(4, 1000, (8, 10)), torch.randint(4, 1000, (8, 10))
        loss, _, tokens = label_smoothed_loss(model(src, torch.full((8,), 10), tgt), tgt, 0.1)
        (loss / tokens).backward()
        return model.attention.query.weight.grad.norm().item()

    unscaled, scaled = attention_gradient(False), attention_gradient(True)
    assert unscaled < 1e-6 < 1e-4 < scaled, (unscaled, scaled)


@pytest.mark.parametrize("input_feeding", [False, True])
@pytest.mark.parametrize("cell", CELL_TYPES)
def test_trains_and_decodes_under_bf16_autocast(cell: str, input_feeding: bool) -> None:
    """``precision: bf16-mixed`` runs the model under autocast (CUDA on GPUs; the CPU here):
    a training step and decoding steps work for every cell (the recurrences run outside
    autocast, in their parameters' float32)."""
    torch.manual_seed(0)
    model = TranslationModel(tiny_config(cell, input_feeding=input_feeding))
    src, lengths, tgt_in = random_batch(torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(src, lengths, tgt_in)
        loss, _, _ = label_smoothed_loss(logits, tgt_in, 0.1)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        encoder_output = model.encode(src, lengths)
        state = model.initial_decoder_state(encoder_output)
        for t in range(tgt_in.size(1)):
            log_probs, _, state = model.decode_step(tgt_in[:, t], state, encoder_output)
            assert torch.isfinite(log_probs).all()
