"""``nmt translate``: sentences from a file or stdin to detokenised translations.

    nmt translate --checkpoint runs/x/checkpoints/last.ckpt --input test.en --output test.de
    echo "A man rides a bike." | nmt translate --checkpoint last.ckpt --beam-size 5

One sentence a line in, one translation a line out (``--nbest N > 1`` or ``--alignment``: one
JSON line per sentence with its N best translations and scores, or its wordpieces and
alignment). ``--document``: the input is one text, split into sentences and written back
translated with its whitespace kept. Also home of what ``nmt evaluate``
shares: where the model comes from, the decoding options, and reading text files.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nmt.errors import UserError
from nmt.io import sha256_file, write_text

if TYPE_CHECKING:
    from torch import nn

    from nmt.decoding import DecodingOptions
    from nmt.decoding.translator import SentenceTranslation, Translator
    from nmt.wordpieces import Wordpieces

DEFAULT_BATCH_SIZE = 64  # sentences per beam search
DEFAULT_LANGUAGE = "en"
STDIN = "-"


# ------------------------------------------------------------------- where the model comes from


@dataclass
class ModelSource:
    """A model ready to decode, its wordpieces, and what to record about where it came from."""

    model: nn.Module
    wordpieces: Wordpieces
    description: dict  # e.g. {"checkpoint": path, "sha256": ...}, written into reports
    decoding: DecodingOptions | None = None  # defaults shipped with the model, if any


def add_model_source_arguments(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """The options naming the model: a training checkpoint or an exported bundle."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--checkpoint", type=Path, help="a training checkpoint (.ckpt) of a translation model"
    )
    group.add_argument(
        "--bundle", type=Path, help="a translation bundle directory written by `nmt export`"
    )
    return group


def load_model_source(args: argparse.Namespace) -> ModelSource:
    if args.bundle is not None:
        from nmt.bundle import load_bundle

        bundle = load_bundle(args.bundle)
        if bundle.task != "translation":
            raise UserError(f"{args.bundle}: a {bundle.task} bundle, not a translation one")
        description = {"bundle": str(args.bundle), "manifest": bundle.manifest}
        return ModelSource(bundle.model, bundle.wordpieces, description, bundle.decoding)
    from nmt.checkpoints import load_translation

    model, wordpieces = load_translation(args.checkpoint)
    description = {"checkpoint": str(args.checkpoint), "sha256": sha256_file(args.checkpoint)}
    return ModelSource(model.eval(), wordpieces, description)


# ------------------------------------------------------------------- decoding options


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per DecodingOptions field (unset ones keep the model's or the defaults)."""
    group = parser.add_argument_group("decoding")
    group.add_argument("--beam-size", type=int, help="1 is greedy decoding (default 5)")
    group.add_argument("--alpha", type=float, help="length penalty exponent; 0 is off (0.6)")
    group.add_argument("--beta", type=float, help="coverage penalty weight; 0 is off (0.0)")
    group.add_argument("--nbest", type=int, help="translations per sentence, <= beam size (1)")
    group.add_argument("--min-length", type=int, help="fewest output wordpieces (1)")
    group.add_argument(
        "--max-length-ratio", type=float, help="most output wordpieces per source wordpiece (2.0)"
    )
    group.add_argument(
        "--max-length-offset", type=int, help="added to the relative maximum length (10)"
    )
    group.add_argument("--max-length", type=int, help="absolute cap on output wordpieces (256)")
    group.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"sentences decoded together (default {DEFAULT_BATCH_SIZE})",
    )
    group.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")


def decoding_options(args: argparse.Namespace, source: ModelSource) -> DecodingOptions:
    """The options given on the command line over the model's defaults, by the translator's
    one rule (the server resolves a request's options the same way)."""
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    lengths = {
        name: getattr(args, name, None)
        for name in ("min_length", "max_length_ratio", "max_length_offset", "max_length")
    }
    return translator_for(source).options(
        beam_size=args.beam_size,
        alpha=args.alpha,
        beta=args.beta,
        nbest=args.nbest,
        alignment=getattr(args, "alignment", False),
        **lengths,
    )


def translator_for(source: ModelSource, language: str | None = None) -> Translator:
    from nmt.decoding.translator import Translator, TranslatorConfig

    config = TranslatorConfig() if language is None else TranslatorConfig(language=language)
    return Translator(source.model, source.wordpieces, source.decoding, config)


def set_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))


# ------------------------------------------------------------------- text files


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file (``.gz`` is unpacked; ``-`` is stdin)."""
    name = "<stdin>" if str(path) == STDIN else str(path)
    try:
        data = sys.stdin.buffer.read() if str(path) == STDIN else Path(path).read_bytes()
        if name.endswith(".gz"):
            data = gzip.decompress(data)
    except OSError as error:  # missing file, or not gzip
        raise UserError(f"{name}: cannot read ({error.strerror or error})") from None
    lines = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as error:
            raise UserError(
                f"{name}:{number}: not UTF-8 ({error.reason} at byte {error.start})"
            ) from None
    if lines and lines[-1] == "":
        lines.pop()  # the newline ending the last line
    return lines


def read_text(path: str | Path) -> str:
    """A whole UTF-8 text file (``.gz`` is unpacked; ``-`` is stdin), exactly as written."""
    name = "<stdin>" if str(path) == STDIN else str(path)
    try:
        data = sys.stdin.buffer.read() if str(path) == STDIN else Path(path).read_bytes()
        if name.endswith(".gz"):
            data = gzip.decompress(data)
    except OSError as error:
        raise UserError(f"{name}: cannot read ({error.strerror or error})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise UserError(
            f"{name}:{line}: not UTF-8 ({error.reason} at byte {error.start})"
        ) from None


# ------------------------------------------------------------------- translating


def translate_lines(
    translator: Translator,
    lines: Sequence[str],
    options: DecodingOptions,
    batch_size: int,
    progress: bool,
) -> list[SentenceTranslation]:
    """A translation for every line; blank lines get an empty one without decoding."""
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(1 for line in lines if line.strip())
        bar = tqdm(total=total, unit="sent", file=sys.stderr, dynamic_ncols=True)
    try:
        return translator.translate(
            lines, options, batch_size, progress=bar.update if bar is not None else None
        )
    finally:
        if bar is not None:
            bar.close()


def translation_record(translation: SentenceTranslation, options: DecodingOptions) -> dict:
    """One sentence's translation with the fields and names of the server's answer."""
    record: dict = {
        "text": translation.text,
        "score": translation.score,
        "log_prob": translation.log_prob,
    }
    if options.nbest > 1:
        record["nbest"] = [
            {"text": c.text, "score": c.score, "log_prob": c.log_prob} for c in translation.nbest
        ]
    if translation.alignment is not None:
        record["source_tokens"] = translation.alignment.source_tokens
        record["target_tokens"] = translation.alignment.target_tokens
        record["alignment"] = [list(pair) for pair in translation.alignment.pairs]
    return record


def format_translation(translation: SentenceTranslation, options: DecodingOptions) -> str:
    """The best translation; a JSON line with ``--nbest N > 1`` or ``--alignment``."""
    if options.nbest == 1 and not options.return_attention:
        return translation.text
    return json.dumps(translation_record(translation, options), ensure_ascii=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nmt translate",
        description="Translate sentences (one a line) from a file or stdin with beam search.",
    )
    add_model_source_arguments(parser)
    parser.add_argument(
        "--input", default=STDIN, help="source sentences, one a line (.gz allowed; default stdin)"
    )
    parser.add_argument("--output", type=Path, help="translations (default stdout)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on files")
    parser.add_argument(
        "--document",
        action="store_true",
        help="the input is one document: split into sentences, translated, and written back "
        "with its whitespace (blank lines, line breaks, spaces) kept exactly",
    )
    parser.add_argument(
        "--language",
        default=DEFAULT_LANGUAGE,
        help=f"source language for --document's sentence splitter (default {DEFAULT_LANGUAGE})",
    )
    parser.add_argument(
        "--alignment",
        action="store_true",
        help="JSON output with each sentence's wordpieces and source-target alignment "
        "(argmax attention per target wordpiece)",
    )
    add_decoding_arguments(parser)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    set_threads(args)
    source = load_model_source(args)
    options = decoding_options(args, source)
    translator = translator_for(source, args.language)

    if args.document:
        document, translations = translator.translate_document(read_text(args.input), options)
        if options.nbest > 1 or options.return_attention:
            records = [translation_record(t, options) for t in translations]
            text = json.dumps({"document": document, "translations": records}, ensure_ascii=False)
            text += "\n"
        else:
            text = document
    elif args.input == STDIN and sys.stdin.isatty():  # typed by a person: answer line by line
        for line in sys.stdin:
            translation = translate_lines(translator, [line], options, args.batch_size, False)[0]
            print(format_translation(translation, options), flush=True)
        return 0
    else:
        lines = read_lines(args.input)
        progress = args.input != STDIN and not args.no_progress
        results = translate_lines(translator, lines, options, args.batch_size, progress)
        text = "".join(format_translation(t, options) + "\n" for t in results)
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_text(args.output, text)
    return 0
