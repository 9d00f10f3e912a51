"""Request and response bodies of every endpoint, with the server's limits.

FastAPI validates each request against these models in the HTTP process, before it reaches a
model worker, and answers a bad one with 422 and a message naming the field; so a worker only
ever sees well-formed input, and one bad request can never spoil a batch it would have joined.
The same models give the OpenAPI schema (``GET /openapi.json``, ``/docs``).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_serializer,
    model_validator,
)

from nmt.text_checks import is_blank

# Limits: a request beyond any of them is refused with a 4xx naming the field.
MAX_TEXT_CHARS = 1000  # characters per text (translate, LM score, LM prefix)
MAX_TEXTS = 64  # texts per translate request
MAX_DOCUMENT_CHARS = 100_000  # characters per translate document (split into sentences)
MAX_BEAM_SIZE = 16
MAX_NBEST = MAX_BEAM_SIZE
MAX_ALPHA = 5.0  # length penalty exponent
MAX_BETA = 5.0  # coverage penalty weight
MAX_GENERATE_LENGTH = 1000  # characters the LM may generate per request
MIN_TEMPERATURE = 0.0  # 0 picks the most likely character
MAX_TEMPERATURE = 5.0
MAX_BODY_BYTES = 1 << 20  # request body size
IMAGE_SIZE = 28  # MNIST images are 28 x 28 grey values
PIXEL_MAX = 255
MAX_PNG_BYTES = 64 << 10
MAX_SCALING_UNITS = 32  # hidden units per gate in a /lm/scalings answer (1000 chars: 256k numbers)
DEFAULT_SCALING_UNITS = 16


def _strict(**extra) -> ConfigDict:
    # strict: no silent coercion ("5" is not 5); forbid: a misspelt option is an error, not ignored.
    return ConfigDict(strict=True, extra="forbid", **extra)


Text = Annotated[
    str,
    Field(min_length=1, max_length=MAX_TEXT_CHARS, description="UTF-8 text, not blank"),
]


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("text is blank")
    return text


def _one_or_list(value: object) -> str | None:
    return "one" if isinstance(value, str) else "list" if isinstance(value, list) else None


# One text or a list of them; the tag names the branch in error locations ("text.list.3").
OneOrMoreTexts = Annotated[
    Annotated[Text, Tag("one")]
    | Annotated[list[Text], Field(min_length=1, max_length=MAX_TEXTS), Tag("list")],
    Discriminator(
        _one_or_list,
        custom_error_type="text_type",
        custom_error_message="must be a string or a list of strings",
    ),
]


# ----------------------------------------------------------------------------- translate


class TranslateRequest(BaseModel):
    """One text, a list of texts, or a document, with optional beam settings (defaults from the
    bundle). Give exactly one of ``text`` and ``document``."""

    model_config = _strict(
        json_schema_extra={
            "examples": [
                {"text": "A man is riding a bike.", "beam_size": 5},
                {"document": "A dog runs. A cat sleeps.\n\nTwo men talk.", "alignment": True},
            ]
        }
    )

    text: OneOrMoreTexts | None = Field(
        None, description="one sentence, or a list of them (each translated as one sentence)"
    )
    document: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_DOCUMENT_CHARS,
        description="a whole text: split into paragraphs (blank lines and line breaks kept "
        "exactly) and sentences, each translated on its own, then reassembled with the "
        "original whitespace",
    )
    beam_size: int | None = Field(None, ge=1, le=MAX_BEAM_SIZE)
    alpha: float | None = Field(None, ge=0.0, le=MAX_ALPHA, allow_inf_nan=False)
    beta: float | None = Field(None, ge=0.0, le=MAX_BETA, allow_inf_nan=False)
    nbest: int | None = Field(None, ge=1, le=MAX_NBEST, description="at most beam_size")
    alignment: bool = Field(
        False,
        description="add each sentence's source and target wordpieces and their alignment "
        "(argmax attention per target wordpiece)",
    )

    @field_validator("text")
    @classmethod
    def _texts_not_blank(cls, value: str | list[str] | None) -> str | list[str] | None:
        for index, text in enumerate(
            [] if value is None else [value] if isinstance(value, str) else value
        ):
            if is_blank(text):
                raise ValueError(
                    "text is blank" if isinstance(value, str) else f"text {index} is blank"
                )
        return value

    @field_validator("document")
    @classmethod
    def _document_not_blank(cls, value: str | None) -> str | None:
        if value is not None and is_blank(value):
            raise ValueError("document is blank")
        return value

    @model_validator(mode="after")
    def _one_input_and_nbest_within_beam(self) -> TranslateRequest:
        if (self.text is None) == (self.document is None):
            raise ValueError("give exactly one of 'text' and 'document'")
        if self.nbest is not None and self.beam_size is not None and self.nbest > self.beam_size:
            raise ValueError(f"nbest ({self.nbest}) must not exceed beam_size ({self.beam_size})")
        return self

    @property
    def texts(self) -> list[str]:
        if self.text is None:
            return []
        return [self.text] if isinstance(self.text, str) else list(self.text)


class Candidate(BaseModel):
    text: str
    score: float = Field(description="GNMT score: log P / length penalty + coverage penalty")
    log_prob: float = Field(description="log P(translation | source)")


def _without_unasked(data: dict, names: tuple[str, ...]) -> dict:
    """The fields a request did not ask for are left out (absent, not null)."""
    return {key: value for key, value in data.items() if key not in names or value is not None}


class Translation(BaseModel):
    @model_serializer(mode="wrap")
    def _alignment_only_when_asked(self, handler):
        return _without_unasked(handler(self), ("source_tokens", "target_tokens", "alignment"))

    text: str = Field(description="the best translation")
    score: float
    log_prob: float
    nbest: list[Candidate] | None = Field(None, description="best first, when nbest was given")
    source_tokens: list[str] | None = Field(
        None, description="the source's wordpieces, when alignment was asked"
    )
    target_tokens: list[str] | None = Field(
        None, description="the best translation's wordpieces, when alignment was asked"
    )
    alignment: list[list[int]] | None = Field(
        None,
        description="[source_index, target_index] pairs: for each target wordpiece the source "
        "wordpiece it attends to most (end of sentence excluded), when alignment was asked",
    )


class TranslateResponse(BaseModel):
    @model_serializer(mode="wrap")
    def _document_only_for_documents(self, handler):
        return _without_unasked(handler(self), ("document",))

    document: str | None = Field(
        None, description="for a document: its translation, with the original whitespace kept"
    )
    translations: list[Translation] = Field(
        description="one per input text, or one per sentence of the document, in order"
    )


# ----------------------------------------------------------------------------- classify

Pixel = Annotated[float, Field(ge=0, le=PIXEL_MAX, allow_inf_nan=False)]
Row = Annotated[list[Pixel], Field(min_length=IMAGE_SIZE, max_length=IMAGE_SIZE)]


class ClassifyRequest(BaseModel):
    """An MNIST digit: 28 x 28 grey values 0-255 (white digit on black), or a PNG."""

    model_config = _strict()

    pixels: Annotated[list[Row], Field(min_length=IMAGE_SIZE, max_length=IMAGE_SIZE)] | None = (
        Field(None, description="28 rows of 28 grey values, 0 (background) to 255 (ink)")
    )
    png: str | None = Field(
        None,
        max_length=MAX_PNG_BYTES * 4 // 3 + 4,
        description="base64 of a 28 x 28 PNG (converted to grey)",
    )

    @field_validator("png")
    @classmethod
    def _readable_png(cls, value: str | None) -> str | None:
        if value is not None:
            _png_grey_values(value)
        return value

    @model_validator(mode="after")
    def _exactly_one_image(self) -> ClassifyRequest:
        if (self.pixels is None) == (self.png is None):
            raise ValueError("give exactly one of 'pixels' or 'png'")
        return self

    def grey_values(self) -> list[list[float]]:
        """The image as 28 rows of 28 grey values 0-255."""
        return self.pixels if self.png is None else _png_grey_values(self.png)


def _png_grey_values(data: str) -> list[list[float]]:
    from PIL import Image, UnidentifiedImageError

    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as image:
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):  # checked before decoding the pixels
                width, height = image.size
                raise ValueError(f"the image is {width}x{height}, not {IMAGE_SIZE}x{IMAGE_SIZE}")
            values = list(image.convert("L").getdata())
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise ValueError("not a readable PNG image") from None
    return [
        [float(v) for v in values[row * IMAGE_SIZE : (row + 1) * IMAGE_SIZE]]
        for row in range(IMAGE_SIZE)
    ]


class ClassifyResponse(BaseModel):
    digit: int
    probabilities: list[float] = Field(description="P(digit = k) for k = 0..9")


# ----------------------------------------------------------------------------- char LM


class ScoreRequest(BaseModel):
    model_config = _strict()

    text: Text

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        return _not_blank(value)


class ScoreResponse(BaseModel):
    bits_per_character: float
    characters: int = Field(description="characters scored (the text, then its end)")


class GenerateRequest(BaseModel):
    model_config = _strict()

    prefix: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] = Field(
        "", description="text to continue (may be empty)"
    )
    length: int = Field(100, ge=1, le=MAX_GENERATE_LENGTH, description="characters to generate")
    temperature: float = Field(1.0, ge=MIN_TEMPERATURE, le=MAX_TEMPERATURE, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="for a repeatable sample")


class GenerateResponse(BaseModel):
    text: str = Field(description="the generated continuation (without the prefix)")


class ScalingsRequest(BaseModel):
    """A text whose HyperLSTM weight scalings d(z) to return, as ``nmt plot scalings`` draws."""

    model_config = _strict()

    text: Text
    units: int = Field(
        DEFAULT_SCALING_UNITS,
        ge=1,
        le=MAX_SCALING_UNITS,
        description="hidden units per gate to return (the first ones)",
    )
    layer: int = Field(0, ge=0, description="recurrent layer, 0 = the bottom one")

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        return _not_blank(value)


class ScalingsResponse(BaseModel):
    characters: list[str] = Field(description="the text's characters, one per column")
    gates: list[str] = Field(description="gate order of the scalings: i, f, o, g")
    layer: int
    hidden_size: int = Field(description="hidden units per gate in the layer")
    d_h: list[list[list[float]]] = Field(
        description="[gate][unit][character]: scaling of the recurrent weight rows"
    )
    d_x: list[list[list[float]]] = Field(
        description="[gate][unit][character]: scaling of the input weight rows"
    )


def limits() -> dict[str, int | float]:
    """The limits, as reported by ``GET /models``."""
    return {
        "max_text_chars": MAX_TEXT_CHARS,
        "max_texts": MAX_TEXTS,
        "max_document_chars": MAX_DOCUMENT_CHARS,
        "max_beam_size": MAX_BEAM_SIZE,
        "max_nbest": MAX_NBEST,
        "max_alpha": MAX_ALPHA,
        "max_beta": MAX_BETA,
        "max_generate_length": MAX_GENERATE_LENGTH,
        "min_temperature": MIN_TEMPERATURE,
        "max_temperature": MAX_TEMPERATURE,
        "max_body_bytes": MAX_BODY_BYTES,
        "max_scaling_units": MAX_SCALING_UNITS,
    }
