"""The ListObjectsV2 reader (seams/s3_listing): its quick reader reads the answers of real
servers' shapes exactly as ElementTree does, and hands every other answer to ElementTree."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tui_backfill.seams.bucket import Listed, ListedPage
from tui_backfill.seams.s3_listing import _parsed, _quick, read_listing

NS = "http://s3.amazonaws.com/doc/2006-03-01/"

# XML 1.0 characters (no surrogates, no C0 controls but tab, newline, carriage return)
xml_chars = st.characters(
    blacklist_categories=("Cs",),
    blacklist_characters=[chr(c) for c in range(32) if c not in (9, 10, 13)] + ["\ufffe", "\uffff"],
)
keys = st.text(xml_chars, min_size=1, max_size=40)


def escape(text: str) -> str:
    """Character data as Go's encoding/xml writes it (rclone, MinIO): the markup characters
    as entities, tab, newline and carriage return as character references."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace('"', "&quot;").replace("'", "&apos;")
    return text.replace("\t", "&#x9;").replace("\n", "&#xA;").replace("\r", "&#xD;")


def escape_plain(text: str) -> str:
    """Character data with only what XML requires escaped (& and <), as some servers write."""
    return text.replace("&", "&amp;").replace("<", "&lt;")


def entry(key: str, size: int, etag: str, modified: str, style: str) -> str:
    parts = {
        "Key": f"<Key>{key}</Key>",
        "LastModified": f"<LastModified>{modified}</LastModified>",
        "ETag": f"<ETag>{etag}</ETag>",
        "Size": f"<Size>{size}</Size>",
        "StorageClass": "<StorageClass>STANDARD</StorageClass>",
        "Owner": "<Owner><ID>abc</ID><DisplayName>me</DisplayName></Owner>",
        "Checksum": "<ChecksumAlgorithm>CRC32</ChecksumAlgorithm><ChecksumType>FULL_OBJECT</ChecksumType>",
    }
    order = {
        "aws": ["Key", "LastModified", "ETag", "Checksum", "Size", "StorageClass", "Owner"],
        "rclone": ["Key", "LastModified", "ETag", "Size", "StorageClass"],
        "minio": ["Key", "LastModified", "ETag", "Size", "Owner", "StorageClass"],
        "odd": ["Key", "Owner", "LastModified", "ETag", "Size"],  # not the schema's sequence
    }[style]
    sep = "\n    " if style == "rclone" else ""
    return f"<Contents>{sep}" + sep.join(parts[name] for name in order) + f"{sep}</Contents>"


@st.composite
def answers(draw: st.DrawFn, styles: tuple[str, ...] = ("aws", "rclone", "minio")) -> bytes:
    style = draw(st.sampled_from(styles))
    url_encoded = draw(st.booleans())
    quote = escape if draw(st.booleans()) else escape_plain
    objects = draw(st.lists(st.tuples(keys, st.integers(0, 2**40)), max_size=12))
    start = datetime(2020, 1, 1, tzinfo=UTC)
    entries = []
    for n, (key, size) in enumerate(sorted(set(objects))):
        wire_key = urllib.parse.quote_plus(key, safe="/") if url_encoded else key
        modified = (start + timedelta(seconds=n * 997, milliseconds=n)).isoformat(
            timespec="milliseconds"
        )
        etag = f'"{n:032x}"' if style == "aws" else f"{n:032x}"
        entries.append(
            entry(quote(wire_key), size, quote(etag), modified.replace("+00:00", "Z"), style)
        )
    truncated = draw(st.sampled_from(["true", "false"]))
    sep = "\n  " if style == "rclone" else ""
    head = f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{NS}">{sep}'
    fields = [f"<Name>bench</Name><Prefix>p/</Prefix><KeyCount>{len(entries)}</KeyCount>"]
    fields.append(f"<IsTruncated>{truncated}</IsTruncated>")
    if url_encoded:
        fields.append("<EncodingType>url</EncodingType>")
    body = head + sep.join(fields + entries) + f"{sep}</ListBucketResult>\n"
    return body.encode()


@settings(max_examples=400, deadline=None)
@given(answers())
def test_the_quick_reader_reads_servers_answers_as_elementtree_does(body: bytes) -> None:
    quick = _quick(body)
    parsed = _parsed(body)
    if b"&#" not in body and b"\r" not in body:  # ElementTree's: see the module's docstring
        assert quick is not None, body
        assert quick == parsed
    assert read_listing(body) == parsed


@settings(max_examples=150, deadline=None)
@given(answers(styles=("odd",)))
def test_another_order_inside_contents_is_read_by_elementtree(body: bytes) -> None:
    if b"<Contents>" in body:
        assert _quick(body) is None
    assert read_listing(body) == _parsed(body)


def page(*contents: str, tail: str = "</ListBucketResult>") -> bytes:
    fields = "<IsTruncated>false</IsTruncated>" + "".join(contents)
    return f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{NS}">{fields}{tail}'.encode()


PLAIN = entry("a/1.jpg", 5, "e1", "2026-12-07T01:06:45.155Z", "rclone")


@pytest.mark.parametrize(
    "body",
    [
        page(PLAIN.replace("<Key>a/1.jpg</Key>", "<Key><![CDATA[a/<1>.jpg]]></Key>")),
        page("<!-- <Contents><Key>ghost</Key></Contents> -->", PLAIN),
        page(PLAIN.replace("a/1.jpg", "a/&#x2603;.jpg")),
        page(PLAIN.replace("a/1.jpg", "a/\r\n.jpg")),
        page(PLAIN.replace("<Contents>", "<Contents >")),
        page(PLAIN, "<?pi x?>"),
        page(PLAIN, PLAIN.replace("<ETag>e1</ETag>", "<ETag>e1</ETag><ETag>e2</ETag>")),
        page(PLAIN, "<IsTruncated>true</IsTruncated>"),
        page(PLAIN.replace("a/1.jpg", "a&nbsp;b")),
        page(PLAIN).replace(b'encoding="UTF-8"', b'encoding="ISO-8859-1"'),
        page(PLAIN.replace("a/1.jpg", "caf\xe9")).replace(
            b'encoding="UTF-8"', b'encoding="latin-1"'
        ),
        page(PLAIN).replace(b"<IsTruncated>false", b"<IsTruncated >true"),
        page(PLAIN, "<Foo><IsTruncated>true</IsTruncated></Foo>"),
        page(PLAIN.replace("<Size>5</Size>", "<Size>5</Size><IsTruncated>true</IsTruncated>")),
        page(PLAIN.replace("a/1.jpg", "a%20b"), "<EncodingType >url</EncodingType>"),
        page(f'<W xmlns="urn:x">{PLAIN}</W>'),
        page(PLAIN).replace(b'encoding="UTF-8"', b'encoding = "ISO-8859-1"'),
        page(PLAIN.replace("<Size>5</Size>", "<Size>\u0661\u0662</Size>")),
        page(PLAIN, "<Name>a&b</Name>"),
        page(PLAIN.replace("a/1.jpg", "a\x01b")),
        page(PLAIN, "<Name>x</Name>").replace(b"<Name>x", b"<Name>\xff"),
        page(PLAIN) + page(PLAIN),
        b"junk" + page(PLAIN),
        page(PLAIN).replace(b"2006-03-01/", b"2006}03-01/"),
        page(PLAIN, "<IsTruncated/>"),
    ],
    ids=[
        "cdata",
        "comment",
        "char-ref",
        "carriage-return",
        "tag-space",
        "pi",
        "two-etags",
        "two-truncated",
        "html-entity",
        "latin1-declared",
        "latin1-bytes",
        "truncated-tag-space",
        "truncated-nested",
        "truncated-in-contents",
        "encoding-type-tag-space",
        "contents-in-another-namespace",
        "encoding-declared-with-spaces",
        "non-ascii-digits",
        "bare-ampersand",
        "control-character",
        "invalid-utf8",
        "two-roots",
        "text-before-root",
        "brace-in-namespace",
        "truncated-twice",
    ],
)
def test_shapes_the_quick_reader_does_not_read_exactly_go_to_elementtree(body: bytes) -> None:
    assert _quick(body) is None
    try:
        expected = _parsed(body)
    except (ElementTree.ParseError, ValueError) as exc:
        with pytest.raises(type(exc)):
            read_listing(body)
    else:
        assert read_listing(body) == expected


def test_what_the_quick_reader_reads() -> None:
    quoted = entry("a/&amp;b &lt;c&gt;.jpg", 7, "&quot;e2&quot;", "2026-12-07T01:06:46Z", "aws")
    listing = _quick(page(PLAIN, quoted))
    assert listing is not None
    assert listing.truncated is False
    assert listing.objects == [
        Listed("a/1.jpg", 5, "e1", datetime(2026, 12, 7, 1, 6, 45, 155000, tzinfo=UTC)),
        Listed("a/&b <c>.jpg", 7, "e2", datetime(2026, 12, 7, 1, 6, 46, tzinfo=UTC)),
    ]


def test_a_cut_answer_is_refused_not_read_short() -> None:
    body = page(PLAIN, PLAIN.replace("a/1.jpg", "a/2.jpg"))
    cut = body[: body.index(b"a/2.jpg")]
    assert _quick(cut) is None
    with pytest.raises(ElementTree.ParseError):
        read_listing(cut)


MUTATIONS = [
    b"<", b">", b"/", b"&", b"&amp;", b"&#65;", b"<!-- c -->", b"<![CDATA[x]]>", b"]]>", b" ",
    b"\t", b"\r", b"\x00", b"\xff", b"\xc3\xa9", b"\xef\xbb\xbf", b'"', b"=", b"<Contents>",
    b"</Contents>", b"<IsTruncated>true</IsTruncated>", b"<EncodingType>url</EncodingType>",
    b"<Foo>", b"</Foo>", b'<W xmlns="urn:x">', b"<x:Key>", b' a="1"', b"<?pi?>", b"<Size>5</Size>",
    b"<Key>z</Key>", b"%20", b"}", b"<IsTruncated/>", b"<ListBucketResult>", b"</ListBucketResult>",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(answers(), st.lists(st.tuples(st.integers(0), st.sampled_from(MUTATIONS)), max_size=3))
def test_a_damaged_answer_is_read_as_elementtree_reads_it(
    body: bytes, damage: list[tuple[int, bytes]]
) -> None:
    for where, what in damage:
        at = where % (len(body) + 1)
        body = body[:at] + what + body[at:]
    assert _outcome(read_listing, body) == _outcome(_parsed, body)


def _outcome(read: Callable[[bytes], ListedPage], body: bytes) -> ListedPage | str:
    try:
        return read(body)
    except (ElementTree.ParseError, ValueError):  # not XML, or a field that is no number...
        return "refused"
