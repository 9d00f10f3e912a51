"""``nmt prep``: dispatch to the preparation of one kind of data, importing it lazily."""

from __future__ import annotations

import importlib

from nmt.errors import UserError

# kind -> (module with ``main(argv) -> int``, one-line help)
KINDS: dict[str, tuple[str, str]] = {
    "translation": ("data_prep.parallel_corpus", "parallel corpus -> wordpieces -> Arrow splits"),
    "chars": ("data_prep.char_corpus", "text -> character vocabulary and id arrays"),
    "mnist": ("data_prep.mnist", "MNIST IDX files -> train/valid/test arrays"),
}


def _usage() -> str:
    width = max(map(len, KINDS))
    lines = ["usage: nmt prep <kind> [options]", "", "kinds:"]
    lines += [f"  {kind:<{width}}  {text}" for kind, (_, text) in KINDS.items()]
    lines += ["", "Run `nmt prep <kind> --help` for its options."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    kind, rest = argv[0], argv[1:]
    if kind not in KINDS:
        raise UserError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    module = importlib.import_module(KINDS[kind][0])
    return int(module.main(rest) or 0)
