"""The ``nmt`` command: one entry point that dispatches to subcommands, importing each lazily.

Heavy libraries (torch, Lightning, DeepSpeed, datasets) are imported by the subcommand that needs
them, never here.
"""

from __future__ import annotations

import importlib
import os
import sys

from nmt.errors import UserError

# subcommand -> (module with ``main(argv) -> int``, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "prep": ("data_prep.cli", "prepare corpora: translation, character LM, MNIST"),
    "fit": ("nmt.training.cli", "train a model from a YAML config (LightningCLI)"),
    "validate": ("nmt.training.cli", "run validation from a config and checkpoint (LightningCLI)"),
    "test": ("nmt.training.cli", "run the test loop from a config and checkpoint (LightningCLI)"),
    "translate": ("nmt.commands.translate", "translate text with beam search"),
    "evaluate": ("nmt.commands.evaluate", "decode a split and score it with sacreBLEU"),
    "average": ("nmt.commands.average", "average the parameters of the last N checkpoints"),
    "export": ("nmt.commands.export", "export a checkpoint as a self-contained bundle"),
    "serve": ("serve.cli", "serve bundles over HTTP (translate, classify, LM)"),
    "plot": ("nmt.commands.plot", "draw training curves and the papers' pictures as PNG"),
    "quickstart": ("nmt.commands.quickstart", "prepare, train, BLEU, export, serve"),
}


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: nmt <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "Run `nmt <command> --help` for a command's options."]
    return "\n".join(lines)


def run(name: str, argv: list[str]) -> int:
    """Run subcommand ``name`` with ``argv``; a ``UserError`` becomes a one-line message."""
    module_name, _ = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
        # LightningCLI subcommands need their own name back as the first argument.
        args = [name, *argv] if module_name == "nmt.training.cli" else argv
        return int(module.main(args) or 0)
    except UserError as error:
        if os.environ.get("NMT_TRACEBACK"):
            raise
        print(f"nmt {name}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nmt {name}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"nmt: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return run(name, rest)


def prep_main() -> int:
    return run("prep", sys.argv[1:])


def serve_main() -> int:
    return run("serve", sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
