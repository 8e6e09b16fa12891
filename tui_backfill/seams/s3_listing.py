"""A ListObjectsV2 answer read into a `ListedPage`: each object's key, size, ETag and
LastModified, and whether more objects follow.

A re-run over an unchanged bucket does little more per object than read its listing entry, so
the reading is what a re-run's CPU goes on. botocore's parser takes about 110 ms of CPU for a
page of 1,000 objects here, ElementTree about 11 ms, and the scanner here (`_quick`) about 5.

The scanner reads the answers S3 servers send (AWS, R2, MinIO, rclone), token by token from
the root's start to its end, and gives up, handing the answer to ElementTree (`_parsed`), at
anything else. What it reads: UTF-8 with no character XML forbids, no carriage return (XML
reads one as a newline) and no `]]>`; an optional XML declaration (UTF-8 at most); the root
`<ListBucketResult>` with a default namespace at most; under it, text-only elements
(`<Name>`, `<IsTruncated>`, ...; empty ones too), `<CommonPrefixes>` of `<Prefix>`es, and
`<Contents>` in the schema's sequence (Key, LastModified, ETag, any checksum elements, Size:
an xsd:sequence every server keeps) followed by text-only elements and an `<Owner>` or
`<RestoreStatus>` of text-only elements; tags without attributes or spaces; character data
with no entity but XML's five; `<IsTruncated>` and `<EncodingType>` once at most. So every
answer it reads is well-formed XML read the same way by ElementTree, which
`tests/test_s3_listing.py` checks over generated and mutated answers.
"""

from __future__ import annotations

import re
import urllib.parse
from xml.etree import ElementTree

from tui_backfill.seams.s3_wire import Listed, ListedPage, parse_timestamp, unquote_etag

_W = r"[ \t\n]*"
_TEXT = r"[^<&]*(?:&(?:amp|lt|gt|quot|apos);[^<&]*)*"  # character data, XML's five entities
_NAME = r"[A-Za-z][A-Za-z0-9]*"
_CHILD = r"(?!IsTruncated>|EncodingType>)"  # those two only where ElementTree reads them
_HEAD = re.compile(
    rf"""(?:<\?xml [ \t\n]+ version {_W} = {_W} (["']) 1\.[0-9]+ \1
            (?: [ \t\n]+ encoding {_W} = {_W} (["']) (?i:utf-?8) \2 )?
            (?: [ \t\n]+ standalone {_W} = {_W} (["']) (?:yes|no) \3 )? {_W} \?> )?
        {_W} <ListBucketResult (?: [ \t\n]+ xmlns {_W} = {_W} (?:"[^"<&{{}}]*"|'[^'<&{{}}]*') )? {_W} >
    """.encode(),
    re.VERBOSE,
)
_TOKEN = re.compile(  # one element under the root, and the blanks before it
    rf"""{_W} (?:
        <Contents> {_W}
            <Key>(?P<key>{_TEXT})</Key> {_W}
            <LastModified>(?P<modified>{_TEXT})</LastModified> {_W}
            <ETag>(?P<etag>{_TEXT})</ETag> {_W}
            (?: <(?P<sum>Checksum[A-Za-z]*)>{_TEXT}</(?P=sum)> {_W} )*
            <Size>(?P<size>[0-9]*)</Size>
            (?: {_W} (?: <(?P<box>Owner|RestoreStatus)>
                            (?: {_W} <{_CHILD}(?P<boxed>{_NAME})>{_TEXT}</(?P=boxed)> )* {_W}
                        </(?P=box)>
                      | <{_CHILD}(?P<inner>{_NAME})>{_TEXT}</(?P=inner)> ) )* {_W}
        </Contents>
      | <CommonPrefixes> (?: {_W} <Prefix>{_TEXT}</Prefix> )* {_W} </CommonPrefixes>
      | <(?!Contents>|CommonPrefixes>)(?P<field>{_NAME})>(?P<text>{_TEXT})</(?P=field)>
      | <(?!Contents/|CommonPrefixes/|IsTruncated/|EncodingType/){_NAME}/>
    )""".encode(),
    re.VERBOSE,
)
_TAIL = re.compile(rf"{_W}</ListBucketResult>{_W}".encode())
# what XML forbids in a document (C0 controls but tab and newline; U+FFFE, U+FFFF), "]]>" in
# character data, and the carriage return XML would read as a newline
_NOT_READ = [bytes([c]) for c in range(32) if c not in (9, 10)] + [
    b"\xef\xbf\xbe",
    b"\xef\xbf\xbf",
    b"]]>",
]
_ONCE = (b"IsTruncated", b"EncodingType")  # the fields read from the answer
_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'"}
_ENTITY = re.compile(r"&[a-z]+;")


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
    """The page read by the scanner, or None when the answer is not of the shape it reads
    exactly (see the module's docstring)."""
    if any(chars in body for chars in _NOT_READ):
        return None
    try:
        body.decode()  # UTF-8 throughout, as the fields read below are
    except UnicodeDecodeError:
        return None
    head = _HEAD.match(body)
    if head is None:
        return None
    text = bytes.decode if b"&" not in body else _text  # (no entity anywhere: the usual case)
    objects = []
    fields: dict[bytes, bytes] = {}
    pos = head.end()
    match = _TOKEN.match(body, pos)
    while match is not None:
        key = match.group("key")
        if key is not None:
            modified = match.group("modified")
            size = match.group("size")
            objects.append((key, size, match.group("etag"), modified))
        elif (field := match.group("field")) is not None:
            if field in _ONCE and field in fields:
                return None  # ElementTree reads the first; the scanner leaves it that choice
            fields[field] = match.group("text")
        pos = match.end()
        match = _TOKEN.match(body, pos)
    if _TAIL.fullmatch(body, pos) is None:
        return None  # something the scanner does not read, or the answer cut short
    encoded = text(fields.get(b"EncodingType", b"")) == "url"
    page = [
        Listed(
            key=_key(text(key), encoded),
            size=int(size) if size else 0,
            etag=unquote_etag(text(etag)),
            last_modified=parse_timestamp(text(modified)) if modified else None,
        )
        for key, size, etag, modified in objects
    ]
    more = text(fields.get(b"IsTruncated", b"")).strip().lower() == "true"
    return ListedPage(page, truncated=more)


def _text(raw: bytes) -> str:
    """Character data with XML's five entities (the only ones the scanner lets through)."""
    text = raw.decode()
    return _ENTITY.sub(lambda entity: _ENTITIES[entity.group()], text) if "&" in text else text


def _key(key: str, encoded: bool) -> str:
    if encoded and ("%" in key or "+" in key):
        return urllib.parse.unquote_plus(key)
    return key
