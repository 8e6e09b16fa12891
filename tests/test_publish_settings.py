"""The publishing worker's settings: the seed's .env verbatim, the contract's precedence, and
bad values named before any work (pure: no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tui_backfill.outcomes import ConfigError
from tui_backfill.pipelines.publish.settings import (
    resolve_publish,
    validate_worker,
)
from tui_backfill.seams.queue import redact_url

SEED_ENV = Path(__file__).parent / "data" / "seed.env"


def test_the_seed_env_file_works_verbatim() -> None:
    settings = resolve_publish({}, env={}, env_file=str(SEED_ENV))
    validate_worker(settings)
    assert settings.bucket == "IBA-Lot-Media"  # B2 names keep their capitals
    assert settings.endpoint_url == "https://s3.us-west-004.backblazeb2.com"  # bare host
    assert settings.region == "us-west-004"
    assert settings.poll_interval == pytest.approx(5.0)  # WORKER_POLL_INTERVAL is in ms
    assert (settings.max_retries, settings.concurrency) == (5, 2)
    assert settings.key_id == "your-b2-key-id"
    assert settings.where("cdn_base_url") == f"{SEED_ENV}: CDN_BASE_URL"


def test_precedence_flags_then_environment_then_env_file_then_toml(tmp_path: Path) -> None:
    toml = tmp_path / "publish.toml"
    toml.write_text("concurrency = 7\nlease = 9.0\n[jobs.other]\nlease = 11.0\n")
    env = {"CONCURRENCY": "4", "B2_BUCKET": "from-env"}
    settings = resolve_publish(
        {"bucket": "from-flag"}, env=env, env_file=str(SEED_ENV), config=str(toml)
    )
    assert settings.bucket == "from-flag"
    assert settings.concurrency == 4  # environment over .env (2) and TOML (7)
    assert settings.lease == 9.0  # TOML over the default
    assert resolve_publish({}, env={}, config=str(toml), job="other").lease == 11.0
    # TUI_BACKFILL_* wins over the seed's name in the same layer
    both = {"CONCURRENCY": "4", "TUI_BACKFILL_CONCURRENCY": "6"}
    assert resolve_publish({}, env=both, env_file=str(SEED_ENV)).concurrency == 6


def test_secrets_are_never_shown() -> None:
    env = {"DATABASE_URL": "postgresql://pub:hunter2-db@127.0.0.1:5432/q"}
    settings = resolve_publish({}, env=env, env_file=str(SEED_ENV))
    shown = str(settings.public_json()) + repr(settings)
    for secret in ("hunter2-db", "your-raid-publisher-secret", "your-b2-application-key"):
        assert secret not in shown
    assert redact_url(env["DATABASE_URL"]) == "postgresql://pub:***@127.0.0.1:5432/q"
    as_parameter = "postgresql://pub@127.0.0.1:5432/q?password=hunter2-db&sslmode=require"
    assert "hunter2-db" not in redact_url(as_parameter)


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"RAID_PUBLISHER_SECRET": ""}, "RAID_PUBLISHER_SECRET"),
        ({"CDN_BASE_URL": "media.example.com"}, "CDN_BASE_URL"),
        ({"CDN_BASE_URL": "ftp://media.example.com"}, "CDN_BASE_URL"),
        ({"CDN_BASE_URL": "https://cdn.example.com/a b"}, "CDN_BASE_URL"),
        ({"B2_ENDPOINT": "http://127.0.0.1:1:2"}, "B2_ENDPOINT"),
        ({"B2_ENDPOINT": "s3.example.com:99999"}, "B2_ENDPOINT"),
        ({"B2_ENDPOINT": "http://minio_1:9000"}, "B2_ENDPOINT"),  # botocore refuses '_'
        ({"B2_ENDPOINT": "http://[::1:9000"}, "B2_ENDPOINT"),
        ({"CDN_BASE_URL": "https://[cdn"}, "CDN_BASE_URL"),
        ({"RAID_PUB_ENDPOINT": "http://raid:port/pub"}, "RAID_PUB_ENDPOINT"),
        ({"RAID_PUB_ENDPOINT": "https://op:pw-in-url@raid.example/pub"}, "RAID_PUB_ENDPOINT"),
        ({"DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL"),
        ({"MAX_RETRIES": "many"}, "MAX_RETRIES"),
        ({"WORKER_POLL_INTERVAL": "-5"}, "WORKER_POLL_INTERVAL"),
        ({"CONCURRENCY": "0x"}, "CONCURRENCY"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        (
            {"TUI_BACKFILL_VARIANT_KEY_TEMPLATE": "media/{lot_id}.webp"},
            "TUI_BACKFILL_VARIANT_KEY_TEMPLATE",
        ),
        ({"TUI_BACKFILL_THUMB_SIZE": "400"}, "TUI_BACKFILL_THUMB_SIZE"),
        ({"TUI_BACKFILL_LEASE": "1"}, "TUI_BACKFILL_LEASE"),
        ({"TUI_BACKFILL_LEASE": "inf"}, "TUI_BACKFILL_LEASE"),
        ({"TUI_BACKFILL_RETRY_BASE": "nan"}, "TUI_BACKFILL_RETRY_BASE"),
        ({"TUI_BACKFILL_MIN_SOURCE_RATE": "-1"}, "TUI_BACKFILL_MIN_SOURCE_RATE"),
        ({"TUI_BACKFILL_MIN_SOURCE_RATE": "4k"}, "TUI_BACKFILL_MIN_SOURCE_RATE"),
    ],
)
def test_bad_values_name_their_variable(env: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_worker(resolve_publish({}, env=env, env_file=str(SEED_ENV)))
    assert str(info.value).startswith(field + ":"), str(info.value)
    assert "\n" not in str(info.value) and "pw-in-url" not in str(info.value)
