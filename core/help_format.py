"""``--help`` that shows every flag's default once: "(default: X)" is appended unless the
help already names its default, the default is empty (None, False, []) or the argument is
positional; tuples and lists print as ``a,b,c`` (as they are typed). Used by every
command's parser (``core.data.commands``, ``study.cli_help``)."""

from __future__ import annotations

import argparse


class DefaultsFormatter(argparse.HelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        empty = (default is None or default is False or default == argparse.SUPPRESS
                 or (isinstance(default, (list, tuple, str)) and not default))
        if not action.option_strings or "default" in text.lower() or empty:
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()
