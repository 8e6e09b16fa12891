"""Secrets in URLs: an origin's password and secret-looking query parameters (tokens,
signatures, API keys) are shown as *** and never stored; a resume puts them back from the URL
the operator gives again. Pure functions, used by the settings and by the origins' messages.
"""

from __future__ import annotations

import re
import urllib.parse

from tui_backfill.outcomes import ConfigError

SECRET_QUERY_NAMES = (
    "token", "access_token", "auth", "key", "apikey", "api_key", "secret", "password",
    "passwd", "pass", "pwd", "sig", "signature", "credential", "credentials",
    "x-amz-signature", "x-amz-credential", "x-amz-security-token",
)  # fmt: skip
SECRET_QUERY_SUFFIXES = ("token", "secret", "password", "signature", "credential", "apikey")
REDACTED = "***"
_NORMAL_SECRET_NAMES = frozenset(n.replace("-", "").replace("_", "") for n in SECRET_QUERY_NAMES)
_TEMPLATE_FIELD = re.compile(r"\{(?:sku|angle)\}")


def is_secret_param(name: str) -> bool:
    """Whether a query parameter's name says its value is a secret (see SECRET_QUERY_NAMES)."""
    normal = urllib.parse.unquote_plus(name).lower().replace("-", "").replace("_", "")
    return normal in _NORMAL_SECRET_NAMES or normal.endswith(SECRET_QUERY_SUFFIXES)


def _secret_value(name: str, value: str) -> bool:
    return bool(value) and is_secret_param(name) and not _TEMPLATE_FIELD.search(value)


def secret_query_params(url: str) -> list[str]:
    """Names of the query parameters of `url` that carry a secret (or its *** in a stored URL),
    in order: what a resume must get back from a URL given again."""
    query = urllib.parse.urlsplit(url).query
    found = []
    for part in query.split("&") if query else ():
        name, _, value = part.partition("=")
        if _secret_value(name, value):
            found.append(urllib.parse.unquote_plus(name))
    return found


def _redact_query(url: str) -> str:
    """`url` with secret query values replaced by ***; everything else byte for byte (no
    re-encoding, which would turn a `{sku}` field into `%7Bsku%7D`)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.query:
        return url
    pieces = []
    for part in parts.query.split("&"):
        name, eq, value = part.partition("=")
        pieces.append(f"{name}{eq}{REDACTED}" if _secret_value(name, value) else part)
    return urllib.parse.urlunsplit(parts._replace(query="&".join(pieces)))


def strip_password(url: str) -> str:
    """For storing: the URL without its password and with secret query values as ***, so the
    state never holds a secret and a URL given again compares equal once stripped."""
    try:
        url = _redact_query(url)
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # not a URL urlsplit reads (an unclosed "[", ...): user:***@, no query
        return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url.split("?", 1)[0])
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = urllib.parse.quote(parts.username or "", safe="")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{netloc}" if user else netloc))


def redact_url(url: str | None) -> str:
    """For display: the URL with any password and secret query value shown as ***."""
    if not url:
        return ""
    try:
        url = _redact_query(url)
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # not a URL urlsplit reads (an unclosed "[", ...): user:***@, no query
        return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url.split("?", 1)[0])
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def restore_secrets(stored_url: str, given_url: str | None) -> str:
    """The origin URL to continue a run with, whose stored URL had its query secrets removed.

    They come back only from a URL given again (`--origin`, TUI_BACKFILL_ORIGIN, the TOML
    file) that is the stored one once stripped; with none, a stored URL that had query
    secrets is a ConfigError naming TUI_BACKFILL_ORIGIN (fetching with *** would fail at the
    origin, or worse, look like it worked). A URL without query secrets is returned as stored.
    """
    if given_url and strip_password(given_url) == stored_url:
        return given_url
    hidden = secret_query_params(stored_url)
    if not hidden:
        return stored_url
    raise ConfigError(
        "TUI_BACKFILL_ORIGIN",
        f"required to continue this run: its origin's {', '.join(hidden)} "
        f"{'query value is' if len(hidden) == 1 else 'query values are'} never stored; "
        "set it to the full origin URL",
    )
