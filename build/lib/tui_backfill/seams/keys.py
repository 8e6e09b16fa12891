"""Which SKUs and keys are usable: the one rule that keeps a SKU from escaping its key or path.

A SKU is usable when it is non-empty, has no leading or trailing whitespace, is not `.` or
`..`, contains no `/` or `\\`, and contains no control or invisible character: C0 and C1
controls and DEL (Unicode Cc), format characters such as zero-width spaces, bidi overrides and
the BOM (Cf), line and paragraph separators (Zl, Zp), lone surrogates (text that is not valid
UTF-8, Cs) and Unicode noncharacters (U+FDD0..U+FDEF, U+xxFFFE, U+xxFFFF). Letters of any
script, digits, punctuation, symbols and inner spaces are fine.

An unusable SKU is never fetched and never written: the engine records each of its items as a
failed item `bad_sku` naming the reason. A usable SKU goes into the key as it is (S3 keys are
UTF-8 text) and into origin URLs percent-encoded (see `Template.render_url`); since it has no
`/` and is not a dot segment, it cannot climb out of the key's or the origin's directory.
"""

from __future__ import annotations

import re
import unicodedata

_ASCII_BAD = re.compile(r"[\x00-\x1f\x7f/\\]")
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_CATEGORY_NAMES = {
    "Cc": "a control character",
    "Cf": "an invisible format character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}
_SHORT = 60  # characters of a SKU quoted in a message


def is_noncharacter(cp: int) -> bool:
    """Unicode noncharacters: U+FDD0..U+FDEF and the last two code points of every plane."""
    return 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE


def char_problem(ch: str) -> str | None:
    """Why one character may not appear in a SKU or a key template, or None."""
    if ch == "/":
        return "contains '/'"
    if ch == "\\":
        return "contains '\\'"
    cp = ord(ch)
    if cp < 0x80:
        return None if 0x20 <= cp < 0x7F else f"contains a control character U+{cp:04X}"
    category = unicodedata.category(ch)
    if category == "Cs":
        return f"is not valid UTF-8 text (lone surrogate U+{cp:04X})"
    if category in _BAD_CATEGORIES:
        return f"contains {_CATEGORY_NAMES[category]} U+{cp:04X}"
    if is_noncharacter(cp):
        return f"contains a Unicode noncharacter U+{cp:04X}"
    return None


def bad_char(text: str) -> str | None:
    """The first reason a character of `text` breaks the rule, or None."""
    if text.isascii():
        match = _ASCII_BAD.search(text)
        return None if match is None else char_problem(match.group())
    for ch in text:
        problem = char_problem(ch)
        if problem is not None:
            return problem
    return None


def sku_problem(sku: str) -> str | None:
    """Why `sku` is unusable (a short reason such as "contains '/'"), or None when it is fine."""
    if not sku:
        return "is empty"
    if sku in (".", ".."):
        return f"is {sku!r}, a relative path segment"
    problem = bad_char(sku)
    if problem is not None:
        return problem
    if sku[0].isspace() or sku[-1].isspace():
        return "has leading or trailing whitespace"
    return None


def _escaped(ch: str) -> str:
    cp = ord(ch)
    return f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"


def visible(text: str) -> str:
    """`text` for a screen or a log line: control and invisible characters escaped as `\\xNN`
    / `\\uNNNN`, so a SKU never sends raw escape sequences to a terminal."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(
        _escaped(ch) if ch not in "/\\" and char_problem(ch) is not None else ch for ch in text
    )


def printable(text: str, limit: int = _SHORT) -> str:
    """`text` quoted for a message: `visible`, with `\\` and `'` escaped, shortened to `limit`
    characters with its full size named."""
    parts = []
    for ch in text[:limit]:
        if ch in "\\'":
            parts.append("\\" + ch)
        elif ch != "/" and char_problem(ch) is not None:
            parts.append(_escaped(ch))
        else:
            parts.append(ch)
    size = len(text.encode("utf-8", "surrogatepass"))
    more = "" if len(text) <= limit else f"... ({size:,} bytes)"
    return "'" + "".join(parts) + "'" + more
