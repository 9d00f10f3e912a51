"""Stand-ins shared by the test modules of the translator and the server."""

from __future__ import annotations


class FailingWordpieces:
    """A bundle's wordpieces, except that formatting one given output raises ``error`` (as a
    damaged weight can make a model emit what the wordpiece model cannot decode)."""

    def __init__(self, wordpieces, poison: list[int], error: Exception | None = None) -> None:
        self.wordpieces, self.poison = wordpieces, poison
        self.error = error or IndexError("piece id is out of range")

    def __getattr__(self, name):
        return getattr(self.wordpieces, name)

    def decode(self, ids):
        if list(ids) == self.poison:
            raise self.error
        return self.wordpieces.decode(ids)
