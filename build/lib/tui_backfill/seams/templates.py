"""Key and origin URL templates: `{sku}` and `{angle}` fields, validated up front."""

from __future__ import annotations

import re
import string
import urllib.parse
from dataclasses import dataclass

from tui_backfill.outcomes import ConfigError
from tui_backfill.seams.keys import bad_char

FIELDS = ("sku", "angle")
DEFAULT_KEY_TEMPLATE = "rsr/highres/{sku}_{angle}_HR.jpg"
MAX_KEY_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Template:
    """A validated `str.format` template over `{sku}` and `{angle}`."""

    text: str

    def render(self, sku: str, angle: int) -> str:
        """The text with the values as they are (a bucket key: S3 keys are UTF-8 text)."""
        return self.text.format(sku=sku, angle=angle)

    def render_url(self, sku: str, angle: int) -> str:
        """An origin URL: the SKU percent-encoded as one URL component (`A B` -> `A%20B`,
        `x#y` -> `x%23y`, `100%` -> `100%25`), so it reaches the origin as one path segment
        or query value whatever it holds; the template's own text is left as written."""
        return self.text.format(sku=urllib.parse.quote(sku, safe=""), angle=angle)

    @property
    def literal_prefix(self) -> str:
        """The fixed text before the first field (the listing prefix for keys)."""
        return next(iter(string.Formatter().parse(self.text)), ("",))[0]

    @property
    def sku_first(self) -> bool:
        """True when the template is `<literal>{sku}...`: keys then sort near their SKU."""
        parts = list(string.Formatter().parse(self.text))
        return bool(parts) and parts[0][1] == "sku"


def parse_template(text: str, field: str, required: tuple[str, ...]) -> Template:
    """Check that `text` uses only known fields, and all of `required`."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ConfigError(field, f"{text!r} is not a valid template ({exc})") from None
    seen: set[str] = set()
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in FIELDS:
            raise ConfigError(
                field, f"unknown field {{{name}}} in {text!r}; accepted fields: {{sku}}, {{angle}}"
            )
        if spec or conversion:
            raise ConfigError(field, f"field {{{name}}} takes no format spec in {text!r}")
        seen.add(name)
    missing = [name for name in required if name not in seen]
    if missing:
        need = " and ".join(f"{{{name}}}" for name in required)
        raise ConfigError(field, f"{text!r} must contain {need}")
    return Template(text)


def key_template(text: str) -> Template:
    """A key template: {sku} and {angle}, and text that cannot make a key escape its prefix.

    The template's own text follows the SKU rule's characters (tui_backfill.seams.keys) and must not
    start or end with `/`, hold `//`, or hold a `.` or `..` path segment. Together with that
    rule, no key it renders for a usable SKU has any of these either.
    """
    field = "--key-template"
    template = parse_template(text, field, ("sku", "angle"))
    if text != text.strip():
        raise ConfigError(field, f"{text!r} must not start or end with whitespace")
    if text.startswith("/"):
        raise ConfigError(field, f"{text!r} must not start with '/'")
    if text.endswith("/"):
        raise ConfigError(field, f"{text!r} must not end with '/' (a folder marker, not a key)")
    sample = template.render("x", 1)  # a usable SKU is never empty, '.', '..' or holds '/'
    problem = bad_char(sample.replace("/", ""))
    if problem is not None:
        raise ConfigError(field, f"{text!r} {problem}")
    segments = sample.split("/")
    if "" in segments:
        raise ConfigError(field, f"{text!r} must not contain '//' (an empty path segment)")
    dots = next((s for s in segments if s in (".", "..")), None)
    if dots is not None:
        raise ConfigError(field, f"{text!r} must not contain a {dots!r} path segment")
    return template


def origin_template(text: str) -> Template:
    """An origin URL; a URL without fields gets the seed's naming `/{sku}_{angle}` appended
    to its path (before any query, which may carry a token)."""
    if "{" not in text:
        base, mark, query = text.partition("?")
        text = base.rstrip("/") + "/{sku}_{angle}" + mark + query
    return parse_template(text, "--origin", ("sku",))


S3_ORIGIN_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-_]{1,254}")


def s3_origin(text: str) -> tuple[str, Template]:
    """The bucket and the key template of an `s3://BUCKET/KEY_TEMPLATE` origin.

    The key is the text after the bucket, rendered as it is (no percent-encoding: S3 keys are
    UTF-8 text). Without fields the seed's naming `{sku}_{angle}` is appended. Credentials
    never go in the URL (they would be shown and stored): the message says where they go.
    """
    field = "--origin"
    rest = text.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if "@" in bucket or ":" in bucket:
        raise ConfigError(
            field,
            "s3:// origins take no credentials or port in the URL; use "
            "ORIGIN_AWS_ACCESS_KEY_ID / ORIGIN_AWS_SECRET_ACCESS_KEY or --origin-profile, "
            "and --origin-endpoint-url",
        )
    if not bucket:
        raise ConfigError(
            field, f"{text!r} names no bucket; write s3://BUCKET/{{sku}}_{{angle}}.jpg"
        )
    if "{" in bucket or not S3_ORIGIN_BUCKET.fullmatch(bucket):
        raise ConfigError(field, f"{bucket!r} is not a valid bucket name in {text!r}")
    if "?" in key or "#" in key:
        raise ConfigError(field, f"{text!r}: an s3:// key template takes no '?' or '#'")
    if "{" not in key:
        key = key.rstrip("/") + "/{sku}_{angle}" if key.strip("/") else "{sku}_{angle}"
    template = parse_template(key, field, ("sku",))
    if key.startswith("/"):
        raise ConfigError(field, f"{text!r}: the key after the bucket must not start with '/'")
    return bucket, template
