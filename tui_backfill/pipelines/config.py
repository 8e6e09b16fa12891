"""Settings of a run, resolved from flags, then TUI_BACKFILL_* variables, then TOML, then defaults.

Every option `--foo-bar` is `TUI_BACKFILL_FOO_BAR` in the environment and `foo_bar` in the TOML
file (top level, or under `[jobs.NAME]`, which wins over the top level for that job). Values
are validated here, before any work, and a bad one raises ConfigError naming where it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import ipaddress
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tui_backfill.outcomes import ConfigError
from tui_backfill.pipelines import PIPELINES
from tui_backfill.pipelines.mirror.angles import parse_angles
from tui_backfill.seams.notify import check_notify_url
from tui_backfill.seams.templates import (
    DEFAULT_KEY_TEMPLATE,
    key_template,
    origin_template,
    s3_origin,
)
from tui_backfill.seams.urls import (
    redact_url,
    strip_password,
)

ENV_PREFIX = "TUI_BACKFILL_"
DEFAULT_STATE = "state/tui-backfill.sqlite3"
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ORIGIN_SCHEMES = ("http", "https", "ftp", "file", "s3")
# Options that only an s3:// origin reads.
S3_ORIGIN_OPTIONS = ("origin_endpoint_url", "origin_region", "origin_path_style", "origin_profile")


class ExistsCheck(enum.StrEnum):
    """How the image job knows an object exists before fetching it."""

    LIST = "list"  # a listing of the page's key range: one request per 1,000 keys
    HEAD = "head"  # a HEAD per item


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its type, default and help. `pacing` options may change on resume."""

    name: str
    kind: type
    default: Any
    help: str
    pacing: bool = False
    stored: bool = True  # part of a run's settings (saved with its state)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("job", str, "default", "job name (state is kept per job)", stored=False),
    Option("state", str, DEFAULT_STATE, "SQLite state file", stored=False),
    Option(
        "pipeline",
        str,
        "mirror",
        "what the job does: mirror (the image backfill) or hash-index; fixed once it ran",
    ),
    Option("limit_skus", int, 2000, "SKUs scanned by one run"),
    Option("angles", str, "1-3", "angle spec: 1-3, 1,2,3, 1-2,4"),
    Option("concurrency", int, 3, "parallel origin fetches (the politeness cap)", pacing=True),
    Option("max_concurrency", int, 6, "highest --concurrency allowed", pacing=True),
    Option("only_missing", bool, True, "skip objects that already exist"),
    Option("skus_file", str, None, "SKU file: one per line, or CSV with a sku column"),
    Option("skus_db", str, None, "catalog database (SQLite file, opened read-only)"),
    Option("skus_query", str, None, "SQL returning one column of active SKUs"),
    Option("origin", str, None, "origin URL template with {sku} and {angle}"),
    Option(
        "origin_endpoint_url",
        str,
        None,
        "S3 endpoint of an s3:// origin (else AWS S3; AWS_ENDPOINT_URL is the destination's)",
    ),
    Option("origin_region", str, None, "region of an s3:// origin (else us-east-1)"),
    Option("origin_path_style", bool, False, "path-style addressing for an s3:// origin"),
    Option(
        "origin_profile",
        str,
        None,
        "AWS profile with an s3:// origin's credentials (else ORIGIN_AWS_ACCESS_KEY_ID and "
        "ORIGIN_AWS_SECRET_ACCESS_KEY from the environment, else anonymous)",
    ),
    Option("bucket", str, None, "destination bucket"),
    Option("endpoint_url", str, None, "S3 endpoint URL (else AWS_ENDPOINT_URL, else AWS)"),
    Option("region", str, None, "S3 region (else AWS_REGION / AWS_DEFAULT_REGION, else us-east-1)"),
    Option(
        "path_style", bool, False, "path-style bucket addressing (MinIO and most local servers)"
    ),
    Option("key_template", str, DEFAULT_KEY_TEMPLATE, "destination key template"),
    Option("timeout", float, 20.0, "hard timeout of one fetch or S3 call, seconds", pacing=True),
    Option("checkpoint_every", int, 200, "persist the checkpoint at least every N SKUs"),
    Option("max_attempts", int, 3, "attempts per item before it is recorded as failed"),
    Option(
        "backoff", float, 0.5, "first retry wait in seconds (exponential, with jitter)", pacing=True
    ),
    Option(
        "exists_check",
        ExistsCheck,
        "list",
        "how existence is known: list (1 request per 1,000 keys) or head",
    ),
    Option("upload_concurrency", int, 8, "parallel S3 uploads and existence checks", pacing=True),
    Option("max_bandwidth", str, None, "cap on origin download bytes/s, e.g. 5M", pacing=True),
    # The content-hash index (pipeline hash-index).
    Option("prefix", str, "", "hash index: the key prefix it lists (default: the whole bucket)"),
    Option("index_db", str, None, "hash index: the SQLite file of the index table"),
    Option("index_table", str, "files", "hash index: the index table (a plain SQL identifier)"),
    Option("uploader_id", str, "backfill", "hash index: uploader_id of the rows it inserts"),
    Option("emit_sql", str, None, "hash index: also write the upserts as SQL to this file (D1)"),
    Option("since", str, None, "hash index: only objects modified at or after this ISO-8601 time"),
    Option("verify", bool, False, "hash index: re-hash every hashed object and compare"),
    Option("repair", bool, False, "hash index, with --verify: write the actual hashes"),
    Option("mismatch_file", str, None, "hash index, with --verify: CSV of key,stored,actual"),
    Option("limit_objects", int, None, "hash index: objects scanned by one run (default: all)"),
    Option(
        "progress_interval",
        float,
        5.0,
        "seconds between headless progress lines",
        pacing=True,
        stored=False,
    ),
    Option(
        "notify_url",
        str,
        None,
        "POST the final status as JSON here when a run ends (a secret: never stored or shown)",
        stored=False,  # the run keeps only `notify` (notify_label): a resume needs it again
    ),
)
BY_NAME = {option.name: option for option in OPTIONS}
# Defaults of a pipeline that differ from the image job's: the politeness cap of 6 is for a
# third-party origin, and the hash index reads one's own bucket.
PIPELINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "hash-index": {"concurrency": 8, "max_concurrency": 64, "checkpoint_every": 100},
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated settings of one run (secrets excluded: they come from the environment)."""

    job: str = "default"
    state: str = DEFAULT_STATE
    pipeline: str = "mirror"
    limit_skus: int = 2000
    angles: str = "1-3"
    concurrency: int = 3
    max_concurrency: int = 6
    only_missing: bool = True
    skus_file: str | None = None
    skus_db: str | None = None
    skus_query: str | None = None
    origin: str | None = None
    origin_endpoint_url: str | None = None
    origin_region: str | None = None
    origin_path_style: bool = False
    origin_profile: str | None = None
    bucket: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = False
    key_template: str = DEFAULT_KEY_TEMPLATE
    timeout: float = 20.0
    checkpoint_every: int = 200
    max_attempts: int = 3
    backoff: float = 0.5
    exists_check: ExistsCheck = ExistsCheck.LIST
    upload_concurrency: int = 8
    max_bandwidth: str | None = None
    prefix: str = ""
    index_db: str | None = None
    index_table: str = "files"
    uploader_id: str = "backfill"
    emit_sql: str | None = None
    since: str | None = None
    verify: bool = False
    repair: bool = False
    mismatch_file: str | None = None
    limit_objects: int | None = None
    progress_interval: float = 5.0
    notify_url: str | None = dataclasses.field(default=None, repr=False)  # a secret

    @property
    def bandwidth_bytes(self) -> int | None:
        return None if self.max_bandwidth is None else parse_size(self.max_bandwidth)

    # The angle spec parsed once, when the settings are made (() while it is invalid: the
    # validation names the field it came from).
    angle_list: tuple[int, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            parsed = parse_angles(self.angles)
        except ConfigError:
            parsed = ()
        object.__setattr__(self, "angle_list", parsed)

    def stored(self) -> dict[str, Any]:
        """The settings saved with a run: no secrets (the origin's password is removed)."""
        data = {o.name: getattr(self, o.name) for o in OPTIONS if o.stored}
        if data["origin"]:
            data["origin"] = strip_password(data["origin"])
        return data

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def parse_size(text: str, field: str = "--max-bandwidth") -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)i?[bB]?\s*", text)
    if not match:
        raise ConfigError(field, f"{text!r} is not a size; write e.g. 500K, 5M or 1G (bytes/s)")
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
    value = int(float(match.group(1)) * scale)
    if value <= 0:
        raise ConfigError(field, "must be above zero")
    return value


# Query parameters whose values are secrets: compared case-insensitively with `-` and `_`
# ignored (`X-Amz-Signature`, `api_key`, `apiKey`), plus any name ending in one of
# SECRET_QUERY_SUFFIXES (`auth_token`, `client_secret`, `X-Goog-Signature`). Their values are
# shown as *** and never stored; a value holding a template field (`key={sku}`) is the item's
# name, not a secret, and stays.
def _coerce(option: Option, value: Any, field: str) -> Any:
    if value is None:
        return None
    if option.kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(field, f"{value!r} is not a boolean; use true or false")
    if option.kind is int:
        if isinstance(value, bool):
            raise ConfigError(field, f"{value!r} is not a whole number")
        try:
            return int(str(value).strip())
        except ValueError:
            raise ConfigError(field, f"{value!r} is not a whole number") from None
    if option.kind is float:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ConfigError(field, f"{value!r} is not a number of seconds") from None
        if not math.isfinite(number):  # NaN or infinity: no wait, and not storable as JSON
            raise ConfigError(field, f"{value!r} is not a finite number of seconds")
        return number
    if not isinstance(value, str):
        raise ConfigError(field, f"{value!r} must be a string")
    if issubclass(option.kind, enum.Enum):
        try:
            return option.kind(value)
        except ValueError:
            accepted = ", ".join(str(member.value) for member in option.kind)
            raise ConfigError(field, f"{value!r}; accepted: {accepted}") from None
    return value


def load_toml(path: str, job: str, job_field: str | None = None) -> dict[str, Any]:
    """Top-level keys, overlaid by `[jobs.<job>]`.

    `job_field` names where the job came from (`--job`, `TUI_BACKFILL_JOB`), or None for the
    default job; a job the file does not know is refused there (see `check_job_known`).
    """
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("--config", f"{path}: no such file") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("--config", f"{path}: {exc}") from None
    merged = {k: v for k, v in data.items() if k != "jobs"}
    jobs = _job_sections(path, data.get("jobs", {}))
    check_job_known(path, job, job_field, jobs, shared=bool(merged))
    merged.update(jobs.get(job, {}))
    for name in merged:
        if name not in BY_NAME:
            raise ConfigError(f"{path}: {name}", f"unknown setting; known: {', '.join(BY_NAME)}")
    return merged


def _job_sections(path: str, jobs: Any) -> dict[str, dict[str, Any]]:
    """`[jobs.NAME]` tables; anything else under `jobs` is a mistake, not silently skipped."""
    if not isinstance(jobs, dict):
        raise ConfigError(f"{path}: jobs", "must hold tables: [jobs.NAME]")
    for name, section in jobs.items():
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: jobs.{name}", "must be a table: [jobs.NAME]")
    return jobs


def check_job_known(
    path: str, job: str, job_field: str | None, jobs: Mapping[str, Any], *, shared: bool
) -> None:
    """A job the file has no `[jobs.NAME]` for must not silently run with the wrong settings.

    A file of job sections only gives nothing to any other job, so any other name is refused
    (the implicit default job too). A file that also has top-level settings shares them with
    every job, so another name is accepted (a job with only the shared settings) unless it is
    close to a section's name (`imagse` for `images`): that is a typo, refused like the rest.
    A file without job sections accepts any job.
    """
    if not jobs or job in jobs:
        return
    if shared and (job_field is None or not difflib.get_close_matches(job, jobs, n=1)):
        return
    raise ConfigError(
        job_field or "--job", f"{job!r} is not a job of {path}; known: {', '.join(sorted(jobs))}"
    )


@dataclass(frozen=True, slots=True)
class Resolved:
    """Settings plus which values were set explicitly, and where (for error messages)."""

    settings: Settings
    explicit: dict[str, str]  # option name -> source label (flag, env var, file key)


# Files a run's stored settings name: made absolute when given, so that a resume from another
# directory (a shell elsewhere, systemd, cron) opens the same files, never new ones beside it.
FILE_OPTIONS = ("skus_file", "skus_db", "index_db", "emit_sql", "mismatch_file")


def resolve(
    flags: Mapping[str, Any], env: Mapping[str, str] | None = None, config: str | None = None
) -> Resolved:
    """Layer flags > environment > TOML > defaults. `flags` holds only the flags given."""
    env = os.environ if env is None else env
    job, job_field = _job_of(flags, env)
    toml = load_toml(config, job, job_field) if config else {}
    values: dict[str, Any] = {}
    explicit: dict[str, str] = {}
    for option in OPTIONS:
        if flags.get(option.name) is not None:
            values[option.name] = _coerce(option, flags[option.name], option.flag)
            explicit[option.name] = option.flag
        elif option.env in env:
            values[option.name] = _coerce(option, env[option.env], option.env)
            explicit[option.name] = option.env
        elif option.name in toml:
            label = f"{config}: {option.name}"
            values[option.name] = _coerce(option, toml[option.name], label)
            explicit[option.name] = label
    if "endpoint_url" not in values and env.get("AWS_ENDPOINT_URL"):
        values["endpoint_url"] = env["AWS_ENDPOINT_URL"]
        explicit["endpoint_url"] = "AWS_ENDPOINT_URL"
    if "region" not in values:
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if region:
            values["region"] = region
    for name, value in PIPELINE_DEFAULTS.get(values.get("pipeline", "mirror"), {}).items():
        values.setdefault(name, value)
    for name in FILE_OPTIONS:
        if values.get(name) and "://" not in values[name]:  # (a catalog's URL is no file)
            values[name] = os.path.abspath(values[name])
    settings = Settings(**values)
    validate(settings, explicit)
    return Resolved(settings, explicit)


def with_pipeline(resolved: Resolved, pipeline: str) -> Resolved:
    """The settings for a job whose pipeline the state knows (its runs), when none was given:
    `resume --job J` or `run --job J` of a hash-index job. Defaults become the pipeline's."""
    settings = resolved.settings
    if settings.pipeline == pipeline:
        return resolved
    values = {"pipeline": pipeline}
    for name, value in PIPELINE_DEFAULTS.get(pipeline, {}).items():
        if name not in resolved.explicit:
            values[name] = value
    for name in PIPELINE_DEFAULTS.get(settings.pipeline, {}):
        if name not in resolved.explicit and name not in values:
            values[name] = BY_NAME[name].default
    return Resolved(settings.replace(**values), resolved.explicit)


def _job_of(flags: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str, str | None]:
    """The job name, and the field it was given in (None: the default)."""
    option = BY_NAME["job"]
    if flags.get("job"):
        return str(flags["job"]), option.flag
    if env.get(option.env):
        return env[option.env], option.env
    return str(option.default), None


def validate(settings: Settings, explicit: Mapping[str, str] | None = None) -> None:
    """Check every value that can be checked without touching the network."""
    where = dict(explicit or {})

    def field(name: str) -> str:
        return where.get(name, BY_NAME[name].flag)

    if not JOB_NAME.fullmatch(settings.job):  # `$` alone would let "a\n" through
        raise ConfigError(field("job"), f"{settings.job!r}: use letters, digits, . _ - (max 64)")
    if settings.pipeline not in PIPELINES:
        raise ConfigError(
            field("pipeline"),
            f"{settings.pipeline!r} is not a pipeline here; accepted: {', '.join(PIPELINES)}",
        )
    parse_angles(settings.angles, field("angles"))
    if settings.max_concurrency < 1:
        raise ConfigError(field("max_concurrency"), "must be at least 1")
    if settings.concurrency < 1:
        raise ConfigError(
            field("concurrency"),
            f"{settings.concurrency} is below 1; accepted 1 to {settings.max_concurrency}",
        )
    if settings.concurrency > settings.max_concurrency:
        raise ConfigError(
            field("concurrency"),
            f"{settings.concurrency} is above "
            + (
                f"the politeness cap of {settings.max_concurrency}"  # a third-party origin
                if settings.pipeline == "mirror"
                else f"--max-concurrency ({settings.max_concurrency})"
            )
            + "; raise --max-concurrency explicitly to go higher",
        )
    if settings.limit_skus < 1:
        raise ConfigError(field("limit_skus"), "must be at least 1")
    if not 0 < settings.timeout <= 600:
        raise ConfigError(
            field("timeout"), f"{settings.timeout} is out of range; accepted 0 < s <= 600"
        )
    if settings.checkpoint_every < 1:
        raise ConfigError(field("checkpoint_every"), "must be at least 1")
    if not 1 <= settings.max_attempts <= 20:
        raise ConfigError(field("max_attempts"), "accepted 1 to 20")
    if settings.backoff < 0:
        raise ConfigError(field("backoff"), "must not be negative")
    if settings.upload_concurrency < 1:
        raise ConfigError(field("upload_concurrency"), "must be at least 1")
    if settings.exists_check not in tuple(ExistsCheck):
        raise ConfigError(
            field("exists_check"),
            f"{settings.exists_check!r}; accepted: {', '.join(ExistsCheck)}",
        )
    if settings.progress_interval <= 0:
        raise ConfigError(field("progress_interval"), "must be above zero")
    if settings.max_bandwidth is not None:
        parse_size(settings.max_bandwidth, field("max_bandwidth"))
    key_template(settings.key_template)
    check_notify_url(settings.notify_url, field("notify_url"))


def validate_for_run(
    settings: Settings, explicit: Mapping[str, str] | None = None, *, origin: bool = True
) -> None:
    """What a run needs beyond `validate`: a source, an origin and a bucket (for the hash
    index: a bucket and an index). `origin=False`: no origin (coverage lists the bucket)."""
    where = dict(explicit or {})
    if settings.pipeline == "hash-index":
        from tui_backfill.pipelines.hash_index.settings import validate_hash_run

        validate_hash_run(settings, where)
        return
    if settings.skus_file and settings.skus_db:
        raise ConfigError("--skus-file", "give either --skus-file or --skus-db, not both")
    if not settings.skus_file and not settings.skus_db:
        raise ConfigError(
            "--skus-file",
            "no SKU source; give --skus-file PATH or --skus-db PATH with --skus-query SQL",
        )
    if settings.skus_db and not settings.skus_query:
        raise ConfigError(
            "--skus-query", "required with --skus-db (SQL returning one column of SKUs)"
        )
    if settings.skus_file and not Path(settings.skus_file).is_file():
        raise ConfigError(
            where.get("skus_file", "--skus-file"), f"{settings.skus_file}: no such file"
        )
    if settings.skus_db and not settings.skus_db.startswith("postgresql://"):
        if not Path(settings.skus_db).is_file():
            raise ConfigError(
                where.get("skus_db", "--skus-db"), f"{settings.skus_db}: no such file"
            )
    elif settings.skus_db:
        raise ConfigError(
            "--skus-db", "postgresql:// catalogs are not supported yet; give a SQLite file"
        )
    if not origin:
        check_bucket(settings, where)
        return
    if not settings.origin:
        raise ConfigError(
            "--origin",
            "required: an origin URL template such as https://img.example.com/{sku}_{angle}",
        )
    scheme = urllib.parse.urlsplit(settings.origin).scheme
    if scheme not in ORIGIN_SCHEMES:
        raise ConfigError(
            where.get("origin", "--origin"),
            f"scheme {scheme or '(none)'!r} is not supported; accepted: {', '.join(s + '://' for s in ORIGIN_SCHEMES)}",
        )
    _check_origin_template(settings.origin)
    if scheme == "s3":
        s3_origin(origin_template(settings.origin).text)
        check_endpoint(
            settings.origin_endpoint_url, where.get("origin_endpoint_url", "--origin-endpoint-url")
        )
    else:
        for name in S3_ORIGIN_OPTIONS:
            if getattr(settings, name) not in (None, False):
                raise ConfigError(
                    where.get(name, BY_NAME[name].flag),
                    f"only for an s3:// origin; --origin is {scheme}://",
                )
    check_bucket(settings, where)


def check_bucket(settings: Settings, where: Mapping[str, str]) -> None:
    if not settings.bucket:
        raise ConfigError("--bucket", "required: the bucket name")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-_]{1,254}", settings.bucket):
        raise ConfigError(
            where.get("bucket", "--bucket"), f"{settings.bucket!r} is not a valid bucket name"
        )
    check_endpoint(settings.endpoint_url, where.get("endpoint_url", "--endpoint-url"))


def check_endpoint(url: str | None, field: str) -> None:
    """An S3 endpoint; the message quotes it with any password hidden."""
    if url and not is_s3_endpoint(url):
        raise ConfigError(field, f"{redact_url(url)!r}: {ENDPOINT_EXPECTED}")


ENDPOINT_EXPECTED = (
    "expected http(s)://host[:port], with no user or password (the key pair goes in "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
)


def is_http_url(url: str) -> bool:
    """An http(s) URL of a host, its port (when given) a number 0-65535, no white space: what
    a server's address must be before a client is built on it."""
    try:
        parts = urllib.parse.urlsplit(url)  # raises for an unclosed '[' (IPv6)
        parts.port  # noqa: B018  (raises for '1:2', 'x', 99999)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    return not any(c.isspace() for c in url)


_DNS_NAME = re.compile(
    r"^((?!-)[A-Z\d-]{1,63}(?<!-)\.)*((?!-)[A-Z\d-]{1,63}(?<!-))$", re.IGNORECASE
)


def is_s3_endpoint(url: str) -> bool:
    """An http(s) URL botocore takes as an endpoint (its `is_valid_endpoint_url` or
    `is_valid_ipv6_endpoint_url`), with no user or password in it: its host a DNS name
    (letters, digits, hyphens: no `_`), an IPv4 address or a bracketed IPv6 one (a zone id
    allowed). Checked here so that a bad one is a line naming the setting, not botocore's
    traceback when the client is built; read without botocore, whose import a run on the
    direct S3 path never pays (tests/test_s3_direct.py holds the two readings together)."""
    if not is_http_url(url):  # (white space, botocore's unsafe characters, refused there)
        return False
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None or parts.password is not None:
        return False  # S3 takes no credentials in the URL (botocore's errors would quote them)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address: urlsplit took it out of its brackets
        address, _, zone = host.partition("%")  # a zone id: "%25" or "%" before it
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            return False
        return not host.count("%") or (bool(zone) and _ZONE.fullmatch(zone) is not None)
    if len(host) > 255:
        return False
    return _DNS_NAME.match(host.removesuffix(".")) is not None


_ZONE = re.compile(r"(?:[A-Za-z0-9._~-]|%[a-fA-F0-9]{2})+")


def _check_origin_template(origin: str) -> None:
    """The template's errors quote it: quoted redacted, so no secret reaches the screen."""
    try:
        origin_template(origin)
    except ConfigError as exc:
        message = str(exc).split(": ", 1)[-1]
        shown = message.replace(repr(origin), repr(redact_url(origin)))
        raise ConfigError(exc.field, shown.replace(origin, redact_url(origin))) from None
