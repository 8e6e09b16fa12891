"""How `--help` reads: each option with one line of meaning and its default, an example at
the end of every command, and lines that fit the terminal (80 columns when there is none).

argparse wraps option help to the terminal (`COLUMNS`, else the terminal's width, else 80);
the formatter here also wraps descriptions by paragraph and keeps example commands as written.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions and epilogs wrapped by paragraph; a paragraph with an indented line (an
    example command) is kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.strip("\n").split("\n\n"):
            if any(line.startswith("  ") for line in paragraph.splitlines()):
                paragraphs.append(textwrap.indent(paragraph, indent))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(paragraph.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                        break_on_hyphens=False,
                    )
                )
        return "\n\n".join(paragraphs)


def shown(value: Any) -> str:
    """A default as `--help` shows it: on/off for switches."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    return str(value)


def with_default(text: str, default: Any) -> str:
    """`text (default: X)`, escaped for argparse's %-formatting; text alone when there is no
    default, or when the text already says it."""
    if default is not None and "default" not in text:
        text = aside(text, f"default: {shown(default)}")
    return text.replace("%", "%%")


def aside(text: str, note: str) -> str:
    """`text (note)`, or into the parenthesis that ends it: `(the politeness cap; note)`."""
    if text.endswith(")"):
        return f"{text[:-1]}; {note})"
    return f"{text} ({note})"


def example(*commands: str, text: str = "Example") -> str:
    """The epilog: `Example:` then each command indented, kept as written (one shell line
    each; continue a long one with a trailing backslash)."""
    return f"{text}:\n" + "\n".join(f"  {line}" for line in commands)
