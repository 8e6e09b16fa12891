"""Key and origin URL templates: `{sku}` and `{angle}` fields, validated up front."""

from __future__ import annotations

import string
from dataclasses import dataclass

from tui_backfill.outcomes import ConfigError

FIELDS = ("sku", "angle")
DEFAULT_KEY_TEMPLATE = "rsr/highres/{sku}_{angle}_HR.jpg"
MAX_KEY_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Template:
    """A validated `str.format` template over `{sku}` and `{angle}`."""

    text: str

    def render(self, sku: str, angle: int) -> str:
        return self.text.format(sku=sku, angle=angle)

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
    template = parse_template(text, "--key-template", ("sku", "angle"))
    if template.text.startswith("/"):
        raise ConfigError("--key-template", f"{text!r} must not start with '/'")
    return template


def origin_template(text: str) -> Template:
    """An origin URL; a URL without fields gets the seed's naming `/{sku}_{angle}` appended."""
    if "{" not in text:
        text = text.rstrip("/") + "/{sku}_{angle}"
    return parse_template(text, "--origin", ("sku",))
