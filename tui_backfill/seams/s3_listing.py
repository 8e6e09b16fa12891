"""A ListObjectsV2 answer read into a `ListedPage`: each object's key, size, ETag and
LastModified, and whether more objects follow.

A re-run over an unchanged bucket does little more per object than read its listing entry, so
the reading is what a re-run's CPU goes on. botocore's parser takes about 110 ms of CPU for a
page of 1,000 objects here, ElementTree about 11 ms, and one regular expression over the
answer's bytes (`_ENTRY`) about 1.5 ms. The expression reads the shape every S3 server answers
in: the schema's sequence inside `<Contents>` (Key, LastModified, ETag, any checksum elements,
Size, then the rest), unprefixed tags without attributes, UTF-8, character data with the five
XML entities at most.

It is used only where it reads exactly what an XML parser reads (`_quick`): every
`<Contents` of the answer matched, a single `<IsTruncated>` and `<EncodingType>` at most, no
CDATA section, comment, DOCTYPE or character reference (`&#...;`), no processing instruction
past the XML declaration, no other encoding declared, no carriage return (XML reads one as a
newline), and the root closed at the end (a cut answer is ElementTree's to refuse). Any other
answer is read by ElementTree (`_parsed`), as before; `tests/test_s3_listing.py` holds the
two readers equal over generated answers.
"""

from __future__ import annotations

import re
import urllib.parse
from xml.etree import ElementTree

from tui_backfill.seams.bucket import Listed, ListedPage, parse_timestamp, unquote_etag

_ENTRY = re.compile(
    rb"<Contents>[ \t\n]*"
    rb"<Key>([^<]*)</Key>[ \t\n]*"
    rb"<LastModified>([^<]*)</LastModified>[ \t\n]*"
    rb"<ETag>([^<]*)</ETag>[ \t\n]*"
    rb"(?:<Checksum[A-Za-z]*>[^<]*</Checksum[A-Za-z]*>[ \t\n]*)*"
    rb"<Size>([^<]*)</Size>"
)
_TRUNCATED = re.compile(rb"<IsTruncated>([^<]*)</IsTruncated>")
_ENCODING_TYPE = re.compile(rb"<EncodingType>([^<]*)</EncodingType>")
_DECLARED = re.compile(rb"<\?xml[^>]*?encoding=[\"']([^\"']*)[\"']")
_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'"}
_ENTITY = re.compile(r"&[a-z]*;?")


def read_listing(body: bytes) -> ListedPage:
    """A ListObjectsV2 answer (`encoding-type=url`) as botocore reads it: each object's key
    (URL-decoded when the answer says EncodingType url), size, unquoted ETag and LastModified;
    whether more objects follow. Raises ElementTree.ParseError or ValueError for an answer
    that is not a listing."""
    page = _quick(body)
    return page if page is not None else _parsed(body)


def _parsed(body: bytes) -> ListedPage:
    root = ElementTree.fromstring(body)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    encoded = (root.findtext(f"{ns}EncodingType") or "") == "url"
    objects = []
    for entry in root.iter(f"{ns}Contents"):
        key = entry.findtext(f"{ns}Key") or ""
        modified = entry.findtext(f"{ns}LastModified")
        objects.append(
            Listed(
                key=urllib.parse.unquote_plus(key) if encoded else key,
                size=int(entry.findtext(f"{ns}Size") or 0),
                etag=unquote_etag(entry.findtext(f"{ns}ETag") or ""),
                last_modified=parse_timestamp(modified) if modified else None,
            )
        )
    truncated = (root.findtext(f"{ns}IsTruncated") or "").strip().lower() == "true"
    return ListedPage(objects, truncated=truncated)


def _quick(body: bytes) -> ListedPage | None:
    """The page read by `_ENTRY`, or None when the answer is not of the shape it reads
    exactly (see the module's docstring)."""
    if (
        b"<!" in body
        or b"&#" in body
        or b"\r" in body
        or not body.rstrip(b" \t\n").endswith(b"</ListBucketResult>")
        or body.count(b"<?") > (1 if body.startswith(b"<?xml") else 0)
    ):
        return None
    declared = _DECLARED.match(body)
    if declared is not None and declared.group(1).lower() not in (b"utf-8", b"utf8"):
        return None
    entries = _ENTRY.findall(body)
    if len(entries) != body.count(b"<Contents"):
        return None
    truncated = _TRUNCATED.findall(body)
    encoding_type = _ENCODING_TYPE.findall(body)
    if len(truncated) > 1 or len(encoding_type) > 1:
        return None
    text = bytes.decode if b"&" not in body else _text  # (no entity anywhere: the usual case)
    try:
        encoded = bool(encoding_type) and text(encoding_type[0]) == "url"
        objects = [
            Listed(
                key=_key(text(key), encoded),
                size=int(size) if size else 0,
                etag=unquote_etag(text(etag)),
                last_modified=parse_timestamp(text(modified)) if modified else None,
            )
            for key, modified, etag, size in entries
        ]
        more = bool(truncated) and text(truncated[0]).strip().lower() == "true"
    except (UnicodeDecodeError, _NotPlain):
        return None
    return ListedPage(objects, truncated=more)


class _NotPlain(Exception):
    """Character data with an entity that is not one of XML's five."""


def _text(raw: bytes) -> str:
    text = raw.decode()
    return _ENTITY.sub(_entity, text) if "&" in text else text


def _entity(match: re.Match[str]) -> str:
    try:
        return _ENTITIES[match.group()]
    except KeyError:
        raise _NotPlain from None


def _key(key: str, encoded: bool) -> str:
    if encoded and ("%" in key or "+" in key):
        return urllib.parse.unquote_plus(key)
    return key
