"""One-line errors and no invented output for the small cases of bad input."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from helpers import BEFORE_CHECKSUMS
from pydantic import ValidationError

from nmt.bundle import MANIFEST_NAME, WORDPIECES, load_bundle
from nmt.cli import main as nmt_main
from nmt.decoding import DecodingOptions
from nmt.errors import UserError
from nmt.text_checks import is_blank
from serve.schemas import TranslateRequest

INVISIBLE = ["\x00\x1b", "\u200b\u200c\u200d", "\ufeff \u2028", "\u202e\t"]


@pytest.mark.parametrize("text", INVISIBLE)
def test_control_and_zero_width_text_is_blank(text) -> None:
    assert is_blank(text)
    with pytest.raises(ValidationError, match="text is blank"):
        TranslateRequest(text=text)
    with pytest.raises(ValidationError, match="text 1 is blank"):
        TranslateRequest(text=["Ein Hund.", text])


def test_text_with_a_letter_is_not_blank() -> None:
    assert not is_blank("\u200bA\u200b") and not is_blank("ß")


def test_nmt_translate_invents_nothing_for_invisible_lines(tmp_path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("\n".join(["A man.", *INVISIBLE]) + "\n")
    out = tmp_path / "out.txt"
    argv = ["translate", "--checkpoint", str(BEFORE_CHECKSUMS), "--input", str(source)]
    assert nmt_main([*argv, "--output", str(out), "--beam-size", "1", "--no-progress"]) == 0
    lines = out.read_text().split("\n")
    assert len(lines) == len(INVISIBLE) + 2 and lines[1:] == [""] * (len(INVISIBLE) + 1)


def test_a_negative_max_length_names_max_length() -> None:
    with pytest.raises(UserError, match="max_length=-1 is invalid"):
        DecodingOptions(max_length=-1)


def test_a_damaged_wordpiece_model_names_its_file(tmp_path, bundle) -> None:  # noqa: F811
    edited = tmp_path / "edited"
    shutil.copytree(bundle, edited)
    path = edited / WORDPIECES
    path.write_bytes(b"not a sentencepiece model")
    manifest = json.loads((edited / MANIFEST_NAME).read_text())
    manifest["files"][WORDPIECES]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (edited / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=f"{path}: not a sentencepiece model"):
        load_bundle(edited)
