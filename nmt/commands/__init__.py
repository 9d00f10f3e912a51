"""Command-line glue: each module has ``main(argv) -> int`` and is imported only when its
subcommand runs, so ``nmt --help`` answers at once."""
