"""Settings of the publishing worker: flags, then the environment, then a `.env` file, then
TOML, then defaults — the first that sets a value wins.

The seed's `.env` works verbatim: `DATABASE_URL`, `RAID_PUBLISHER_SECRET`, `RAID_PUB_ENDPOINT`,
`B2_KEY_ID`, `B2_APP_KEY`, `B2_BUCKET`, `B2_ENDPOINT` (a bare host means https://),
`B2_REGION`, `CDN_BASE_URL`, `WORKER_POLL_INTERVAL` (ms), `MAX_RETRIES`, `LOG_LEVEL`,
`CONCURRENCY`. In the environment a `TUI_BACKFILL_*` name wins over the seed's name for the
same setting. Secrets (the RAID secret, the B2 key, the database password) come only from the
environment or the `.env` file, never from a flag (a command line is visible in `ps`), and are
never stored or shown: `public_json()` is what status, logs and the state see.

Every value is checked here, before any work; a bad one is a ConfigError naming the variable or
flag it came from (exit 2).
"""

from __future__ import annotations

import math
import os
import re
import string
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tui_backfill.outcomes import ConfigError
from tui_backfill.pipelines.config import is_http_url, is_s3_endpoint
from tui_backfill.seams.cpus import usable_cpus
from tui_backfill.seams.queue import redact_url, sqlite_path

ENV_PREFIX = "TUI_BACKFILL_"
DEFAULT_DATABASE_URL = "sqlite:///state/publish.sqlite3"
DEFAULT_VARIANT_KEY_TEMPLATE = "media/{lot_id}/{file_id}/{variant}.webp"
TEMPLATE_FIELDS = ("lot_id", "file_id", "variant")
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


@dataclass(frozen=True, slots=True)
class Opt:
    """One setting: its type, default, the seed's variable name (if any), and whether it is a
    secret (environment or .env only)."""

    name: str
    kind: type
    default: Any
    help: str
    seed: str | None = None
    secret: bool = False
    scale: float = 1.0  # the seed's variable is in other units (WORKER_POLL_INTERVAL: ms)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTS: tuple[Opt, ...] = (
    Opt("database_url", str, DEFAULT_DATABASE_URL, "the queue: postgresql://... or sqlite:///path", "DATABASE_URL"),
    Opt("raid_endpoint", str, None, "the private store's publish endpoint (GET ?key=...)", "RAID_PUB_ENDPOINT"),
    Opt("raid_secret", str, None, "bearer token for the private store", "RAID_PUBLISHER_SECRET", secret=True),
    Opt("bucket", str, None, "destination bucket (B2 names may have capitals)", "B2_BUCKET"),
    Opt("endpoint_url", str, None, "S3 endpoint (a bare host means https://)", "B2_ENDPOINT"),
    Opt("region", str, None, "S3 region", "B2_REGION"),
    Opt("key_id", str, None, "S3 access key id (else the AWS chain)", "B2_KEY_ID"),
    Opt("app_key", str, None, "S3 secret key (else the AWS chain)", "B2_APP_KEY", secret=True),
    Opt("path_style", bool, False, "path-style bucket addressing (local servers)"),
    Opt("cdn_base_url", str, None, "public base URL of the bucket behind the CDN", "CDN_BASE_URL"),
    Opt("poll_interval", float, 5.0, "seconds between queue polls when no NOTIFY wakes the worker (WORKER_POLL_INTERVAL is in ms)", "WORKER_POLL_INTERVAL", scale=0.001),
    Opt("max_retries", int, 5, "attempts of a new job before it fails for good", "MAX_RETRIES"),
    Opt("log_level", str, "INFO", "DEBUG, INFO, WARNING or ERROR", "LOG_LEVEL"),
    Opt("concurrency", int, 0, "parallel downloads, and image threads up to the cores this process may use (its CPU affinity and quota); unset or 0: those cores", "CONCURRENCY"),
    Opt("lease", float, 60.0, "seconds a claim is held without a heartbeat before any worker may take it"),
    Opt("retry_base", float, 30.0, "first backoff of a failed job, seconds (doubling, ±20 %)"),
    Opt("retry_cap", float, 3600.0, "longest backoff, seconds"),
    Opt("shutdown_timeout", float, 60.0, "on SIGTERM, seconds to finish in-flight jobs"),
    Opt("timeout", float, 30.0, "seconds to the first byte of an answer and of each idle gap"),
    Opt("max_source_bytes", int, 200 * 1024 * 1024, "largest source file, bytes"),
    Opt("min_source_rate", int, 4096, "slowest a source download may go, bytes/s over each --timeout of its body (0: no floor)"),
    Opt("max_pixels", int, 100_000_000, "largest source image, pixels (decompression bombs)"),
    Opt("webp_quality", int, 80, "WebP quality of the variants, 1-100"),
    Opt("thumb_size", str, "400x400", "box the thumb variant fits in, WxH"),
    Opt("display_size", str, "1600x1600", "box the display variant fits in, WxH"),
    Opt("variant_key_template", str, DEFAULT_VARIANT_KEY_TEMPLATE, "bucket key of a variant: {lot_id} {file_id} {variant}"),
)  # fmt: skip
BY_NAME = {opt.name: opt for opt in OPTS}
SECRETS = tuple(opt.name for opt in OPTS if opt.secret)


@dataclass(frozen=True, slots=True)
class PublishSettings:
    job: str = "publish"
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)  # may hold a password
    raid_endpoint: str = ""
    raid_secret: str = field(default="", repr=False)
    bucket: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    key_id: str | None = None
    app_key: str | None = field(default=None, repr=False)
    path_style: bool = False
    cdn_base_url: str = ""
    poll_interval: float = 5.0
    max_retries: int = 5
    log_level: str = "INFO"
    concurrency: int = 0
    lease: float = 60.0
    retry_base: float = 30.0
    retry_cap: float = 3600.0
    shutdown_timeout: float = 60.0
    timeout: float = 30.0
    max_source_bytes: int = 200 * 1024 * 1024
    min_source_rate: int = 4096
    max_pixels: int = 100_000_000
    webp_quality: int = 80
    thumb_size: str = "400x400"
    display_size: str = "1600x1600"
    variant_key_template: str = DEFAULT_VARIANT_KEY_TEMPLATE
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def where(self, name: str) -> str:
        """The variable or flag a value came from (for error messages)."""
        return self.sources.get(name) or BY_NAME[name].seed or BY_NAME[name].flag

    def box(self, name: str) -> tuple[int, int]:
        match = SIZE.fullmatch(getattr(self, name))
        assert match is not None  # validated
        return int(match.group(1)), int(match.group(2))

    def variant_key(self, variant: str, *, lot_id: int | None, file_id: int) -> str:
        lot = "" if lot_id is None else str(lot_id)
        return self.variant_key_template.format(lot_id=lot, file_id=file_id, variant=variant)

    def cdn_url(self, key: str) -> str:
        return self.cdn_base_url.rstrip("/") + "/" + key

    def public_json(self) -> dict[str, Any]:
        """The settings as status, logs and the state may show them: no secret, the database
        URL without its password."""
        data = asdict(self)
        data.pop("sources")
        for name in SECRETS:
            data[name] = "***" if data[name] else None
        data["database_url"] = redact_url(self.database_url)
        return data

    def replace(self, **changes: Any) -> PublishSettings:
        return replace(self, **changes)


def read_env_file(path: str | None, env: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """The `.env` file's values (python-dotenv's parser; the seed's Node worker reads the same
    file with dotenv) and its name. `path` None: TUI_BACKFILL_ENV_FILE, else `./.env` when
    present."""
    if path is None:
        path = env.get(ENV_PREFIX + "ENV_FILE")
        if path is None:
            return (_dotenv(".env"), ".env") if Path(".env").is_file() else ({}, None)
    if not Path(path).is_file():
        raise ConfigError("--env-file", f"{path!r} is not a readable file")
    return _dotenv(path), path


def _dotenv(path: str) -> dict[str, str]:
    from dotenv import dotenv_values

    try:
        values = dotenv_values(path, interpolate=False)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            "--env-file", f"{path!r} cannot be read: {exc.__class__.__name__}"
        ) from None
    return {k: v for k, v in values.items() if v is not None}


def _toml(path: str | None, job: str) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("--config", f"{path}: {exc}") from None
    merged = {k: v for k, v in data.items() if k in BY_NAME}
    section = data.get("jobs", {}).get(job, {}) if isinstance(data.get("jobs"), dict) else {}
    merged.update({k: v for k, v in section.items() if k in BY_NAME})
    return merged


def _coerce(opt: Opt, value: Any, where: str) -> Any:
    if opt.kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(where, f"{value!r}: accepted true or false")
    if opt.kind is int:
        try:
            return int(str(value).strip())
        except ValueError:
            raise ConfigError(where, f"{value!r}: accepted a whole number") from None
    if opt.kind is float:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ConfigError(where, f"{value!r}: accepted a number") from None
        return number
    return str(value)


def resolve_publish(
    flags: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    env_file: str | None = None,
    config: str | None = None,
    job: str | None = None,
) -> PublishSettings:
    """Layer flags > environment (TUI_BACKFILL_* then the seed's names) > .env > TOML >
    defaults, then validate. `flags` holds only the flags given (no secrets among them)."""
    env = os.environ if env is None else env
    job = job or env.get(ENV_PREFIX + "JOB") or "publish"
    dotenv, dotenv_name = read_env_file(env_file, env)
    toml = _toml(config, job)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in OPTS:
        candidates: list[tuple[Any, str, float]] = []
        if not opt.secret and flags.get(opt.name) is not None:
            candidates.append((flags[opt.name], opt.flag, 1.0))
        for layer, label in ((env, ""), (dotenv, f"{dotenv_name}: ")):
            if opt.env in layer:
                candidates.append((layer[opt.env], label + opt.env, 1.0))
            if opt.seed and opt.seed in layer:
                candidates.append((layer[opt.seed], label + opt.seed, opt.scale))
        if opt.name in toml and not opt.secret:
            candidates.append((toml[opt.name], f"{config}: {opt.name}", 1.0))
        if not candidates:
            continue
        raw, where, scale = candidates[0]
        value = _coerce(opt, raw, where)
        if scale != 1.0:
            value = value * scale
        values[opt.name] = value
        sources[opt.name] = where
    if "endpoint_url" not in values and env.get("AWS_ENDPOINT_URL"):
        values["endpoint_url"], sources["endpoint_url"] = (
            env["AWS_ENDPOINT_URL"],
            "AWS_ENDPOINT_URL",
        )
    if "region" not in values and (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")):
        values["region"] = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if not JOB_NAME.fullmatch(job):
        raise ConfigError("--job", f"{job!r}: use letters, digits, . _ - (max 64)")
    settings = PublishSettings(job=job, sources=sources, **values)
    if settings.concurrency == 0:
        # One image thread a core this process may use (its affinity, its CPU quota);
        # downloads and uploads overlap them (pipelines/publish/worker.py)
        settings = settings.replace(concurrency=usable_cpus())
    if settings.endpoint_url and "://" not in settings.endpoint_url:
        settings = settings.replace(endpoint_url="https://" + settings.endpoint_url)
    return settings


def validate_queue(settings: PublishSettings, *, create: bool = True) -> None:
    """What `init-db`, `enqueue` and `status` need: a queue URL of a known kind. A SQLite
    queue is created (`create`: a worker, `enqueue`, `init-db`) only in a directory that
    exists, but the default `state/`, so a mistyped path is no new empty queue; it is read
    (`status`, `pause`, `runs`) only where it exists, so asking creates nothing."""
    url = settings.database_url
    where = settings.where("database_url")
    if not url.startswith(("postgresql://", "postgres://", "sqlite:///")):
        raise ConfigError(
            where,
            "accepted postgresql://user@host/db or sqlite:///relative/path.sqlite3 "
            "(sqlite:////absolute/path)",
        )
    if not url.startswith("sqlite:"):
        return
    path = Path(sqlite_path(url))
    if not create and not path.is_file():
        raise ConfigError(
            where, f"no queue at {path}; a worker, `publish enqueue` or `publish init-db` makes it"
        )
    if create and url != DEFAULT_DATABASE_URL and not path.parent.is_dir():
        raise ConfigError(where, f"{path.parent}: no such directory; create it or fix the path")


def validate_worker(settings: PublishSettings) -> None:
    """Everything a worker needs, checked before it claims anything."""
    validate_queue(settings)
    for name in ("raid_endpoint", "raid_secret", "bucket", "cdn_base_url"):
        if not getattr(settings, name):
            raise ConfigError(
                settings.where(name), "missing; set it in the environment or the .env file"
            )
    _http_url(settings, "raid_endpoint")
    _http_url(settings, "cdn_base_url")
    if settings.endpoint_url:
        _http_url(settings, "endpoint_url")
    if bool(settings.key_id) != bool(settings.app_key):
        missing = "app_key" if settings.key_id else "key_id"
        raise ConfigError(settings.where(missing), "B2_KEY_ID and B2_APP_KEY go together")
    positive = {
        "poll_interval": settings.poll_interval,
        "lease": settings.lease,
        "retry_base": settings.retry_base,
        "retry_cap": settings.retry_cap,
        "shutdown_timeout": settings.shutdown_timeout,
        "timeout": settings.timeout,
        "max_source_bytes": settings.max_source_bytes,
        "max_pixels": settings.max_pixels,
    }
    for name, value in positive.items():
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(settings.where(name), f"{value!r}: accepted a positive number")
    if not 3 <= settings.lease <= 86_400:
        # renewed at a third of it, and trusted up to a second before its end
        raise ConfigError(settings.where("lease"), f"{settings.lease!r}: accepted 3 to 86400 s")
    if not 1 <= settings.max_retries <= 100:
        raise ConfigError(settings.where("max_retries"), f"{settings.max_retries}: accepted 1-100")
    if not 1 <= settings.concurrency <= 256:
        raise ConfigError(
            settings.where("concurrency"),
            f"{settings.concurrency}: accepted 1-256, or 0 for the cores this process may use",
        )
    if settings.min_source_rate < 0:
        raise ConfigError(
            settings.where("min_source_rate"),
            f"{settings.min_source_rate}: accepted 0 (no floor) or more bytes a second",
        )
    if not 1 <= settings.webp_quality <= 100:
        raise ConfigError(settings.where("webp_quality"), "accepted 1-100")
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "WARN", "ERROR"):
        raise ConfigError(
            settings.where("log_level"),
            f"{settings.log_level!r}: accepted DEBUG, INFO, WARNING or ERROR",
        )
    for name in ("thumb_size", "display_size"):
        match = SIZE.fullmatch(getattr(settings, name))
        if match is None or 0 in (int(match.group(1)), int(match.group(2))):
            raise ConfigError(settings.where(name), "accepted WxH, e.g. 400x400")
    _check_template(settings)


def _http_url(settings: PublishSettings, name: str) -> None:
    value = getattr(settings, name)
    if name == "endpoint_url":
        if not is_s3_endpoint(value):
            expected = "expected an http(s):// URL with a host[:port] and no user or password"
            raise ConfigError(settings.where(name), f"{redact_url(value)!r}: {expected}")
        return
    parts = urllib.parse.urlsplit(value) if is_http_url(value) else None
    if parts is None or parts.username is not None or parts.password is not None:
        # (the secret goes in its own header: a user or password in the URL is never sent)
        raise ConfigError(
            settings.where(name),
            f"{redact_url(value)!r}: expected an http(s):// URL with a host[:port] and no user "
            "or password",
        )


def _check_template(settings: PublishSettings) -> None:
    template = settings.variant_key_template
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError:
        fields = {"?"}
    if not {"variant", "file_id"} <= fields or not fields <= set(TEMPLATE_FIELDS):
        raise ConfigError(
            settings.where("variant_key_template"),
            f"{template!r}: needs {{file_id}} and {{variant}}, and may use {{lot_id}}",
        )
