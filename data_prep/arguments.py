"""Argument parsing for the ``nmt prep`` subcommands: bad arguments become one-line UserErrors."""

from __future__ import annotations

import argparse
from typing import NoReturn

from nmt.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose errors raise ``UserError`` (printed in one line, exit 2) instead of
    printing the usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see `{self.prog} --help`)")
