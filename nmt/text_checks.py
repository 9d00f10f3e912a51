"""Which texts count as blank: nothing to translate, so no translation is invented for them.

``str.strip`` removes whitespace only; a text of control characters (NUL, ESC, ...) or of
invisible format characters (zero-width space and joiners, byte-order mark, bidirectional marks)
is just as empty once the wordpiece model has normalised it away.
"""

from __future__ import annotations

import unicodedata

INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})  # control, format, separators


def is_blank(text: str) -> bool:
    """True when ``text`` holds nothing but whitespace, control and format characters."""
    return all(
        char.isspace() or unicodedata.category(char) in INVISIBLE_CATEGORIES for char in text
    )
