"""``POST /lm/score``, ``/lm/generate`` and ``/lm/scalings``: the character language model bundle.

Text is read as the model's symbols, one per character. A vocabulary without a space but with
PTB's word-break symbol ``_`` reads a space as ``_`` (and writes ``_`` back as a space), so plain
text can be scored by a Penn Treebank model. The end-of-line symbol both precedes and ends a
scored text, as every line of the training corpus is preceded and ended by one; generation
likewise starts on a fresh line. A character outside the vocabulary is refused (422).
``/lm/scalings`` returns the HyperLSTM's weight scalings d(z) over a text, the numbers behind
``nmt plot scalings``, so a client can draw them live.
"""

from fastapi import HTTPException

from nmt.errors import UserError
from serve.bundle_api import BatchPredictAPI
from serve.schemas import (
    GenerateRequest,
    GenerateResponse,
    ScalingsRequest,
    ScalingsResponse,
    ScoreRequest,
    ScoreResponse,
)

GATES = ["i", "f", "o", "g"]  # the recurrent cells' gate order
WORD_BREAK = "_"  # PTB's symbol between words
END_OF_LINE = "\n"  # every prepared character corpus ends each line with this symbol


class CharText:
    """How request text maps to a character vocabulary's ids, and back."""

    def __init__(self, symbols: list[str], where: str = "vocabulary") -> None:
        self.index = {symbol: i for i, symbol in enumerate(symbols)}
        self.symbols = symbols
        if END_OF_LINE not in self.index:
            raise UserError(f"{where}: no end-of-line symbol; not a prepared character vocabulary")
        self.end_of_line = self.index[END_OF_LINE]
        self.space = " " if " " in self.index or WORD_BREAK not in self.index else WORD_BREAK

    def ids(self, text: str, field: str) -> list[int]:
        """Ids of ``text``; 422 naming the first character the model does not know."""
        ids = []
        for position, character in enumerate(text):
            symbol = self.space if character == " " else character
            if symbol not in self.index:
                raise HTTPException(
                    422, f"{field}[{position}]: character {character!r} is not in the vocabulary"
                )
            ids.append(self.index[symbol])
        return ids

    def text(self, ids: list[int]) -> str:
        return "".join(" " if self.symbols[i] == self.space else self.symbols[i] for i in ids)


class LMScoreAPI(BatchPredictAPI):
    """Bits per character of a text under the model."""

    def __init__(self, bundle: str, **options) -> None:
        super().__init__(bundle, "/lm/score", **options)

    def prepare(self) -> None:
        self.char_text = CharText(self.bundle.vocabulary.symbols, str(self.bundle.directory))

    def decode_request(self, request: ScoreRequest) -> list[int]:
        ids = self.char_text.ids(request.text, "text")
        return [self.char_text.end_of_line, *ids, self.char_text.end_of_line]

    def predict_batch(self, requests: list[list[int]]) -> list[ScoreResponse]:
        import math

        import torch

        responses = []
        for ids in requests:
            sequence = torch.tensor([ids])
            logits, _ = self.bundle.model(sequence[:, :-1])
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            nll = -log_probs.gather(-1, sequence[:, 1:, None]).mean().item()
            responses.append(
                ScoreResponse(bits_per_character=nll / math.log(2), characters=len(ids) - 1)
            )
        return responses

    def encode_response(self, output: ScoreResponse) -> ScoreResponse:
        return output


class LMGenerateAPI(BatchPredictAPI):
    """Continue a prefix by sampling characters at a temperature."""

    def __init__(self, bundle: str, **options) -> None:
        super().__init__(bundle, "/lm/generate", **options)

    def prepare(self) -> None:
        self.char_text = CharText(self.bundle.vocabulary.symbols, str(self.bundle.directory))

    def decode_request(self, request: GenerateRequest) -> tuple[list[int], GenerateRequest]:
        prefix = [self.char_text.end_of_line, *self.char_text.ids(request.prefix, "prefix")]
        return prefix, request

    def predict_batch(self, requests: list[tuple[list[int], GenerateRequest]]) -> list:
        import torch

        responses = []
        for prefix, request in requests:
            generator = torch.Generator()
            if request.seed is None:
                generator.seed()
            else:
                generator.manual_seed(request.seed)
            ids = self.bundle.model.sample(
                prefix, request.length, temperature=request.temperature, generator=generator
            )
            responses.append(GenerateResponse(text=self.char_text.text(ids)))
        return responses

    def encode_response(self, output: GenerateResponse) -> GenerateResponse:
        return output


class LMScalingsAPI(BatchPredictAPI):
    """The HyperLSTM's row scalings d_h(z) and d_x(z) at each character of a text.

    As ``nmt plot scalings`` does, the text is read once before the returned pass (text, end of
    line, text), so the numbers show how d(z) follows the text rather than the start from a
    zero state.
    """

    def __init__(self, bundle: str, **options) -> None:
        super().__init__(bundle, "/lm/scalings", **options)

    def prepare(self) -> None:
        self.char_text = CharText(self.bundle.vocabulary.symbols, str(self.bundle.directory))

    def decode_request(self, request: ScalingsRequest) -> tuple[list[int], ScalingsRequest]:
        return self.char_text.ids(request.text, "text"), request

    def predict_batch(self, requests: list[tuple[list[int], ScalingsRequest]]) -> list:
        import torch

        model = self.bundle.model
        layers = model.rnn.layers
        hidden = model.config.recurrent.hidden_size
        responses = []
        for ids, request in requests:
            if request.layer >= len(layers):
                raise HTTPException(
                    422, f"layer: {request.layer} is past the model's {len(layers)} layers"
                )
            warm_up = [*ids, self.char_text.end_of_line]
            inputs = model.embedding(torch.tensor([warm_up + ids]))
            for lower in layers[: request.layer]:
                inputs, _ = lower(inputs)
            try:
                scalings = layers[request.layer].weight_scalings(inputs)
            except ValueError as error:  # not a HyperLSTM layer
                raise HTTPException(422, f"this model has no weight scalings: {error}") from None
            units = min(request.units, hidden)
            drawn = {}
            for name, values in scalings.items():
                steps = values[0, len(warm_up) :].float()  # (T, 4H)
                per_gate = steps.view(len(ids), len(GATES), hidden)[:, :, :units]
                drawn[name] = per_gate.permute(1, 2, 0).tolist()  # [gate][unit][character]
            responses.append(
                ScalingsResponse(
                    characters=list(request.text),
                    gates=GATES,
                    layer=request.layer,
                    hidden_size=hidden,
                    d_h=drawn["d_h"],
                    d_x=drawn["d_x"],
                )
            )
        return responses

    def encode_response(self, output: ScalingsResponse) -> ScalingsResponse:
        return output
