"""Subcommand parsers whose ``--help`` shows every default (``core.help_format``)."""

from __future__ import annotations

import argparse

from core.help_format import DefaultsFormatter


def subcommand(sub: argparse._SubParsersAction, name: str, help: str, description: str = "",
               ) -> argparse.ArgumentParser:
    """A subcommand parser with the defaults formatter; its description defaults to ``help``."""
    return sub.add_parser(name, help=help, description=description or help,
                          formatter_class=DefaultsFormatter)
