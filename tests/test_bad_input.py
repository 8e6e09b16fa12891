"""Bad input: one line on stderr naming the field, exit 2, nothing fetched, written or left behind.

Each case drives the real CLI in a subprocess against a real origin and a real S3 server behind
a counting proxy, so "nothing fetched or written" is counted at the servers. Configuration
layering (flags > TUI_BACKFILL_* > TOML [jobs.NAME] > TOML top level > defaults) is checked with
dry runs in-process (no server shares the test's loop there).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from helpers import closed_port, runs_in_state, tool, tool_env

from tui_backfill.frontends import cli
from tui_backfill.servers.catalog import ACTIVE_SKUS_QUERY
from tui_backfill.servers.origin import OriginServer
from tui_backfill.servers.proxy import ReverseProxy

if TYPE_CHECKING:
    from conftest import S3Target


@dataclass
class Ctx:
    tmp: Path
    catalog: Path
    origin: OriginServer
    proxy: ReverseProxy
    target: S3Target

    @property
    def state(self) -> Path:
        return self.tmp / "state" / "s.sqlite3"

    def flags(self) -> dict[str, str | bool | None]:
        return {
            "--state": str(self.state),
            "--skus-db": str(self.catalog),
            "--skus-query": ACTIVE_SKUS_QUERY,
            "--origin": self.origin.url_template,
            "--bucket": self.target.bucket,
            "--endpoint-url": self.proxy.endpoint_url,
            "--backoff": "0.01",
            "--timeout": "1",
            "--limit-skus": "40",
        }


Flags = Callable[[Ctx], dict[str, str | bool | None]]
Env = Callable[[Ctx], dict[str, str]]


def case(
    name: str,
    field: str,
    flags: dict[str, Any] | Flags | None = None,
    env: Env | None = None,
    hint: str | None = None,
) -> Any:
    make_flags: Flags = flags if callable(flags) else (lambda ctx, f=flags or {}: dict(f))
    return pytest.param(make_flags, env or (lambda ctx: {}), field, hint, id=name)


def aws_config(where: Path) -> str:
    """An AWS config file whose profiles yield no credentials: a credential_process that
    fails, two roles that name each other."""
    path = where / "aws-config"
    path.write_text(
        "[profile proc]\ncredential_process = /bin/false\n"
        "[profile loop1]\nrole_arn = arn:aws:iam::123456789012:role/a\nsource_profile = loop2\n"
        "[profile loop2]\nrole_arn = arn:aws:iam::123456789012:role/b\nsource_profile = loop1\n"
        "[profile wrong]\naws_access_key_id = not-a-key\naws_secret_access_key = not-its-secret\n"
    )
    return str(path)


CASES = [
    case("angles-zero", "--angles", {"--angles": "0"}),
    case("angles-reversed", "--angles", {"--angles": "3-1"}),
    case("angles-letter", "--angles", {"--angles": "a"}),
    case("angles-double-comma", "--angles", {"--angles": "1,,2"}),
    case("angles-empty", "--angles", {"--angles": ""}),
    case("concurrency-zero", "--concurrency", {"--concurrency": "0"}),
    case("concurrency-7", "--concurrency", {"--concurrency": "7"}, hint="--max-concurrency"),
    case(
        "catalog-missing",
        "--skus-db",
        lambda ctx: {"--skus-db": str(ctx.tmp / "no-such-catalog.sqlite3")},
    ),
    case("query-fails", "--skus-query", {"--skus-query": "SELECT sku FROM no_such_table"}),
    case("key-template-field", "--key-template", {"--key-template": "x/{foo}.jpg"}),
    case("origin-template-field", "--origin", {"--origin": "http://h/{bar}"}),
    case(
        "endpoint-unreachable",
        "--endpoint-url",
        lambda ctx: {"--endpoint-url": f"http://127.0.0.1:{closed_port()}"},
    ),
    case("endpoint-bad-port", "--endpoint-url", {"--endpoint-url": "http://127.0.0.1:1:2"}),
    case("endpoint-underscore", "--endpoint-url", {"--endpoint-url": "http://minio_1:9000"}),
    case("endpoint-open-bracket", "--endpoint-url", {"--endpoint-url": "http://[::1:9000"}),
    # a password in the endpoint: refused, and never echoed (asserted for every case below)
    case(
        "endpoint-with-password",
        "--endpoint-url",
        lambda ctx: {"--endpoint-url": ctx.proxy.endpoint_url.replace("//", "//u:s3cr3tPW@")},
        hint="AWS_SECRET_ACCESS_KEY",
    ),
    case("bucket-missing", "--bucket", {"--bucket": "no-such-bucket"}),
    case("pipeline-unknown", "--pipeline", {"--pipeline": "variants"}, hint="hash-index"),
    # a plan is what a dry run would do: a real run has none to write
    case(
        "plan-file-without-dry-run",
        "--plan-file",
        lambda ctx: {"--plan-file": str(ctx.tmp / "plan.txt")},
        hint="--dry-run",
    ),
    case(
        "plan-file-no-directory",
        "--plan-file",
        lambda ctx: {"--dry-run": True, "--plan-file": str(ctx.tmp / "no-dir" / "plan.txt")},
    ),
    case(
        "origin-refused",
        "--origin",
        lambda ctx: {"--origin": f"http://127.0.0.1:{closed_port()}/{{sku}}_{{angle}}"},
    ),
    case(
        "origin-unresolvable", "--origin", {"--origin": "http://no-such-host.invalid/{sku}_{angle}"}
    ),
    case(
        "wrong-secret",
        "AWS_ACCESS_KEY_ID",
        env=lambda ctx: {"AWS_SECRET_ACCESS_KEY": ctx.target.secret_key + "-wrong"},
    ),
    case(
        "wrong-access-key",
        "AWS_ACCESS_KEY_ID",
        env=lambda ctx: {"AWS_ACCESS_KEY_ID": "no-such-access-key"},
    ),
    case(
        "no-credentials",
        "AWS_ACCESS_KEY_ID",
        env=lambda ctx: {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},
    ),
    case(
        "partial-credentials",
        "AWS_SECRET_ACCESS_KEY",
        env=lambda ctx: {"AWS_SECRET_ACCESS_KEY": ""},
    ),
    case(
        "profile-process-fails",
        "AWS_PROFILE",
        env=lambda ctx: {
            "AWS_ACCESS_KEY_ID": "",
            "AWS_SECRET_ACCESS_KEY": "",
            "AWS_PROFILE": "proc",
            "AWS_CONFIG_FILE": aws_config(ctx.tmp),
        },
    ),
    case(  # a profile's key pair refused: the profile is what to fix, not AWS_ACCESS_KEY_ID
        "profile-keys-rejected",
        "AWS_PROFILE",
        env=lambda ctx: {
            "AWS_ACCESS_KEY_ID": "",
            "AWS_SECRET_ACCESS_KEY": "",
            "AWS_PROFILE": "wrong",
            "AWS_CONFIG_FILE": aws_config(ctx.tmp),
        },
        hint="profile 'wrong'",
    ),
    case(
        "profile-role-loop",
        "AWS_PROFILE",
        env=lambda ctx: {
            "AWS_ACCESS_KEY_ID": "",
            "AWS_SECRET_ACCESS_KEY": "",
            "AWS_PROFILE": "loop1",
            "AWS_CONFIG_FILE": aws_config(ctx.tmp),
        },
    ),
    case(
        "profile-missing",
        "AWS_PROFILE",
        env=lambda ctx: {
            "AWS_ACCESS_KEY_ID": "",
            "AWS_SECRET_ACCESS_KEY": "",
            "AWS_PROFILE": "nope",
        },
    ),
]


@pytest.mark.parametrize(("flags", "env", "field", "hint"), CASES)
async def test_bad_input_one_line_exit_2_nothing_done(
    tmp_path: Path,
    catalog_db,
    origin: OriginServer,
    rclone_s3: S3Target,
    s3_proxy,
    flags: Flags,
    env: Env,
    field: str,
    hint: str | None,
) -> None:
    proxy = await s3_proxy(rclone_s3)
    ctx = Ctx(tmp_path, catalog_db(40), origin, proxy, rclone_s3)
    merged = {**ctx.flags(), **flags(ctx)}
    argv = ["run", "--no-ui", "--path-style"]
    for flag, value in merged.items():
        if value is True:
            argv.append(flag)
        elif value is not None:
            argv += [flag, value]
    environment = {k: v for k, v in tool_env(rclone_s3, **env(ctx)).items() if v != ""}
    result = await tool(*argv, env=environment)

    assert result.rc == 2, (result.out, result.err)
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.err
    assert field in lines[0]
    assert "Traceback" not in result.err
    if hint:
        assert hint in lines[0]
    assert rclone_s3.secret_key not in result.err and "s3cr3tPW" not in result.err
    assert result.out == ""
    assert origin.gets == 0 and origin.heads == 0
    assert proxy.puts == {} and proxy.count("put_object") == 0
    assert proxy.count("list") == 0 and proxy.count("head_object") == 0
    assert runs_in_state(ctx.state) == 0
    assert rclone_s3.keys() == []
    assert not (ctx.tmp / "plan.txt").exists()


async def test_wrong_credentials_caught_before_any_work_on_a_big_catalog(
    tmp_path: Path, catalog_db, origin: OriginServer, rclone_s3: S3Target, s3_proxy
) -> None:
    """Not thousands of errors: the preflight stops the run before the first fetch."""
    proxy = await s3_proxy(rclone_s3)
    catalog = catalog_db(3000)
    env = tool_env(rclone_s3, AWS_SECRET_ACCESS_KEY="definitely-wrong")
    result = await tool(
        "run",
        "--no-ui",
        "--path-style",
        "--state",
        str(tmp_path / "s.sqlite3"),
        "--skus-db",
        str(catalog),
        "--skus-query",
        ACTIVE_SKUS_QUERY,
        "--origin",
        origin.url_template,
        "--bucket",
        rclone_s3.bucket,
        "--endpoint-url",
        proxy.endpoint_url,
        "--timeout",
        "1",
        env=env,
    )
    assert result.rc == 2 and len(result.err.splitlines()) == 1, result.err
    assert "AWS_ACCESS_KEY_ID" in result.err and "definitely-wrong" not in result.err
    assert origin.gets == 0
    assert sum(proxy.requests.values()) == 1  # the single HeadBucket of the preflight
    assert proxy.count("head_bucket") == 1
    assert runs_in_state(tmp_path / "s.sqlite3") == 0


@pytest.mark.parametrize(
    "origin_url",
    [
        pytest.param(lambda: f"http://127.0.0.1:{closed_port()}/{{sku}}_{{angle}}", id="refused"),
        pytest.param(lambda: "http://no-such-host.invalid/{sku}_{angle}", id="unresolvable"),
    ],
)
async def test_absent_origin_stops_before_a_run(
    tmp_path: Path, catalog_db, rclone_s3: S3Target, s3_proxy, origin_url
) -> None:
    """The operator's 50-SKU run against a closed port: not 23 s of 450 connection errors
    ending "completed" with the job's position moved on, but exit 2 at once, one line naming
    --origin, no run in the state and no request for an object."""
    proxy = await s3_proxy(rclone_s3)
    state = tmp_path / "s.sqlite3"
    common = ("--state", str(state))
    result = await tool(
        "run", "--no-ui", "--path-style", *common, "--skus-db", str(catalog_db(50)),
        "--skus-query", ACTIVE_SKUS_QUERY, "--origin", origin_url(), "--bucket", rclone_s3.bucket,
        "--endpoint-url", proxy.endpoint_url, "--backoff", "0.01", "--timeout", "5",
        env=tool_env(rclone_s3),
    )  # fmt: skip
    assert result.rc == 2, str(result)
    lines = result.err.splitlines()
    assert len(lines) == 1 and "--origin" in lines[0] and "Traceback" not in result.err, lines
    assert result.out == "" and result.seconds < 20, str(result)
    assert proxy.puts == {} and proxy.count("put_object") == 0
    assert proxy.count("list") == 0 and proxy.count("head_object") == 0
    assert runs_in_state(state) == 0 and rclone_s3.keys() == []
    status = await tool("status", *common, env=tool_env(rclone_s3))
    assert status.rc != 0 and "no run" in status.err, str(status)


# -- configuration layering (in-process dry runs) -------------------------------------------
@pytest.fixture
def dry(
    tmp_path: Path, catalog_db, rclone_s3: S3Target, monkeypatch: pytest.MonkeyPatch, capsys
) -> Callable[..., tuple[int, dict[str, Any] | None, str]]:
    for name in list(os.environ):
        if name.startswith(("AWS_", "TUI_BACKFILL_", "ORIGIN_")):
            monkeypatch.delenv(name)
    for name, value in rclone_s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    catalog = catalog_db(30)
    state = tmp_path / "state.sqlite3"

    def run(*args: str, **env: str) -> tuple[int, dict[str, Any] | None, str]:
        with monkeypatch.context() as m:
            for name, value in env.items():
                m.setenv(name, value)
            rc = cli.main(
                [
                    "run",
                    "--no-ui",
                    "--dry-run",
                    "--state",
                    str(state),
                    "--skus-db",
                    str(catalog),
                    "--skus-query",
                    ACTIVE_SKUS_QUERY,
                    "--origin",
                    "http://127.0.0.1:9/{sku}_{angle}",
                    "--bucket",
                    rclone_s3.bucket,
                    "--path-style",
                    "--limit-skus",
                    "5",
                    *args,
                ]
            )
        captured = capsys.readouterr()
        return rc, json.loads(captured.out) if rc == 0 else None, captured.err

    return run


def test_concurrency_from_environment_and_flag_wins(dry) -> None:
    rc, snap, err = dry()
    assert rc == 0 and snap is not None and snap["concurrency"] == 3, err  # the default
    rc, snap, err = dry(TUI_BACKFILL_CONCURRENCY="2")
    assert rc == 0 and snap is not None and snap["concurrency"] == 2, err
    rc, snap, err = dry("--concurrency", "1", TUI_BACKFILL_CONCURRENCY="2")
    assert rc == 0 and snap is not None and snap["concurrency"] == 1, err
    rc, snap, err = dry(TUI_BACKFILL_CONCURRENCY="7")
    assert rc == 2 and len(err.splitlines()) == 1 and "TUI_BACKFILL_CONCURRENCY" in err
    rc, snap, err = dry(TUI_BACKFILL_CONCURRENCY="7", TUI_BACKFILL_MAX_CONCURRENCY="8")
    assert rc == 0 and snap is not None and snap["concurrency"] == 7, err
    rc, snap, err = dry(TUI_BACKFILL_ANGLES="1,,2")
    assert rc == 2 and len(err.splitlines()) == 1 and "TUI_BACKFILL_ANGLES" in err


def test_toml_job_section_top_level_env_and_flags(dry, tmp_path: Path) -> None:
    config = tmp_path / "backfill.toml"
    config.write_text(
        'concurrency = 2\nangles = "1"\n\n[jobs.nightly]\nconcurrency = 4\nangles = "1-2"\n'
    )
    rc, snap, err = dry("--config", str(config), "--job", "nightly")
    assert rc == 0 and snap is not None, err
    assert snap["concurrency"] == 4 and snap["anglesPlanned"] == "1-2"
    assert snap["job"] == "nightly" and snap["plannedItems"] == 10
    rc, snap, err = dry("--config", str(config), "--job", "other")
    assert rc == 0 and snap is not None, err
    assert snap["concurrency"] == 2 and snap["anglesPlanned"] == "1"
    rc, snap, err = dry("--config", str(config), "--job", "nightly", TUI_BACKFILL_CONCURRENCY="5")
    assert rc == 0 and snap is not None and snap["concurrency"] == 5, err  # env over TOML
    rc, snap, err = dry(
        "--config",
        str(config),
        "--job",
        "nightly",
        "--concurrency",
        "1",
        "--angles",
        "2-3",
        TUI_BACKFILL_CONCURRENCY="5",
    )
    assert rc == 0 and snap is not None, err  # flags over everything
    assert snap["concurrency"] == 1 and snap["anglesPlanned"] == "2-3"


def test_toml_carries_the_whole_job(
    tmp_path: Path, catalog_db, rclone_s3: S3Target, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    for name, value in rclone_s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    config = tmp_path / "backfill.toml"
    config.write_text(
        f"""
[jobs.images]
state = "{tmp_path / "toml-state.sqlite3"}"
skus_db = "{catalog_db(12)}"
skus_query = "{ACTIVE_SKUS_QUERY}"
origin = "http://127.0.0.1:9/{{sku}}_{{angle}}"
bucket = "{rclone_s3.bucket}"
endpoint_url = "{rclone_s3.endpoint_url}"
path_style = true
angles = "1-2"
"""
    )
    rc = cli.main(["run", "--no-ui", "--dry-run", "--config", str(config), "--job", "images"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    snap = json.loads(captured.out)
    assert snap["scannedSkus"] == 12 and snap["plannedItems"] == 24
    assert snap["endpoint"] == rclone_s3.endpoint_url
    assert (tmp_path / "toml-state.sqlite3").exists()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        pytest.param("concurency = 3\n", "concurency", id="unknown-top-level-key"),
        pytest.param("[jobs.nightly]\nbuckt = 'x'\n", "buckt", id="unknown-job-key"),
        pytest.param("[jobs.nightly]\nconcurrency = 0\n", "concurrency", id="bad-job-value"),
        pytest.param("concurrency = \n", "backfill.toml", id="not-toml"),
    ],
)
def test_bad_toml_exit_2(dry, tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "backfill.toml"
    config.write_text(text)
    rc, _, err = dry("--config", str(config), "--job", "nightly")
    assert rc == 2
    assert len(err.splitlines()) == 1 and named in err and "backfill.toml" in err, err


def test_missing_toml_file_exit_2(dry, tmp_path: Path) -> None:
    rc, _, err = dry("--config", str(tmp_path / "nope.toml"))
    assert rc == 2 and len(err.splitlines()) == 1 and "--config" in err, err


# -- --plan-file: where the plan goes (in-process dry runs) -----------------------------------
CARRYOVER_NOTE = (
    "# items that failed in earlier runs are retried first by a real run and are not listed here"
)


NEW = "give a regular file or a new name"
NONE = "give a file that is none of the run's inputs"


def partials(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(".partial")]


def test_plan_file_through_a_symlink_writes_its_target(dry, tmp_path: Path) -> None:
    """A symlink stays a symlink: the file it points to gets the plan."""
    elsewhere = tmp_path / "plans"
    elsewhere.mkdir()
    real = elsewhere / "real-plan.txt"
    real.write_text("the operator's file\n")
    link = tmp_path / "plan.txt"
    link.symlink_to(real)
    rc, snap, err = dry("--plan-file", str(link))
    assert rc == 0 and snap is not None, err
    assert link.is_symlink() and os.readlink(link) == str(real)
    lines = real.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# tui-backfill dry run of job default") and CARRYOVER_NOTE in lines
    assert len([line for line in lines if not line.startswith("#")]) == snap["plannedItems"] == 15
    assert f"plan written to {link}" in err
    assert partials(tmp_path) == partials(elsewhere) == []


def _fifo(tmp_path: Path) -> str:
    os.mkfifo(tmp_path / "plan.fifo")
    return str(tmp_path / "plan.fifo")


def _device(tmp_path: Path) -> str:
    """A /dev/null of the test's own (replacing the real one would break the machine)."""
    try:
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod is not allowed here")
    return str(tmp_path / "null")


def _state(tmp_path: Path) -> str:
    return str(tmp_path / "state.sqlite3")


def _state_link(tmp_path: Path) -> str:
    (tmp_path / "state-link").symlink_to(tmp_path / "state.sqlite3")
    return str(tmp_path / "state-link")


def _config(tmp_path: Path) -> str:
    return str(tmp_path / "backfill.toml")


@pytest.mark.parametrize(
    ("make", "named"),
    [
        pytest.param(_fifo, f"is a FIFO, not a regular file; {NEW}", id="fifo"),
        pytest.param(_device, f"is a character device, not a regular file; {NEW}", id="device"),
        pytest.param(_state, f"is the run's --state file; {NONE}", id="state"),
        pytest.param(_state_link, f"is the run's --state file; {NONE}", id="symlink-to-state"),
        pytest.param(
            lambda tmp: str(tmp / "catalog1.sqlite3"),
            f"is the run's --skus-db catalog; {NONE}",
            id="catalog",
        ),
        pytest.param(_config, f"is the run's --config file; {NONE}", id="config"),
    ],
)
def test_plan_file_refused_when_not_a_regular_file_or_an_input(
    dry, tmp_path: Path, make: Callable[[Path], str], named: str
) -> None:
    """Exit 2 before any work, one line naming --plan-file, and every file as it was."""
    rc, _, err = dry()  # the state exists, with the job's history
    assert rc == 0, err
    config = tmp_path / "backfill.toml"
    config.write_text("concurrency = 2\n")
    plan_file = make(tmp_path)
    before = files_in(tmp_path)
    rc, _, err = dry("--plan-file", plan_file, "--config", str(config))
    assert rc == 2
    assert err.splitlines() == [f"tui-backfill: error: --plan-file: {plan_file} {named}"], err
    assert files_in(tmp_path) == before  # nothing replaced, nothing left beside
    assert runs_in_state(tmp_path / "state.sqlite3") == 0


def test_plan_file_refused_as_the_wal_of_a_state_reached_by_a_symlink(dry, tmp_path: Path) -> None:
    """SQLite keeps the -wal beside the file a symlinked --state leads to: that -wal is an
    input too, not a plan file."""
    rc, _, err = dry()
    assert rc == 0, err
    alias = tmp_path / "alias.sqlite3"
    alias.symlink_to(tmp_path / "state.sqlite3")
    wal = tmp_path / "state.sqlite3-wal"
    rc, _, err = dry("--state", str(alias), "--plan-file", str(wal))
    assert rc == 2, err
    assert err.splitlines() == [
        f"tui-backfill: error: --plan-file: {wal} is the run's --state file (-wal); {NONE}"
    ], err


def files_in(directory: Path) -> dict[str, tuple[int, bytes | None]]:
    """Each name's file type and mode, and a regular file's bytes (a symlink's target's)."""
    return {
        name: (path.lstat().st_mode, path.read_bytes() if path.is_file() else None)
        for name in os.listdir(directory)
        if not (path := directory / name).is_dir()
    }


def test_plan_file_written_though_the_final_commit_failed(
    dry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan is put in place before the run's final commit: when that commit fails
    (exit 3), the message says the file was written, as it was."""
    from tui_backfill.core.store import StateUnavailable
    from tui_backfill.state.sqlite import StateStore

    commit = StateStore.commit_checkpoint

    async def final_commit_fails(self: StateStore, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("status"):
            raise StateUnavailable(f"state {self.path}: disk I/O error")
        await commit(self, *args, **kwargs)

    monkeypatch.setattr(StateStore, "commit_checkpoint", final_commit_fails)
    plan_file = tmp_path / "plan.txt"
    rc, _, err = dry("--plan-file", str(plan_file))
    assert rc == 3, err
    assert f"plan written to {plan_file}" in err and "not written" not in err, err
    lines = plan_file.read_text(encoding="utf-8").splitlines()
    assert len([line for line in lines if not line.startswith("#")]) == 15
    assert partials(tmp_path) == []


@pytest.mark.parametrize("when", ["put in place", "written"])
def test_a_plan_file_that_did_not_land_is_exit_3_and_keeps_no_stale_promise(
    dry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """The disk fills while the plan is written, or when it is put in place: exit 3 and one
    error line naming --plan-file, so `dry run && use F` never reads the F of an older run;
    that older F is left as it was and no partial file beside it."""
    import errno

    from tui_backfill.pipelines import plan_file as module

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if when == "put in place":
        monkeypatch.setattr(module.os, "replace", full)
    else:
        monkeypatch.setattr(module.PlanFile, "item", _writes_fail(module.PlanFile.item))
    plan_file = tmp_path / "plan.txt"
    plan_file.write_text("OLD PLAN\n")
    rc, _, err = dry("--plan-file", str(plan_file))
    assert rc == 3, err
    assert f"tui-backfill: error: --plan-file {plan_file} not written: No space left" in err, err
    assert plan_file.read_text() == "OLD PLAN\n"
    assert partials(tmp_path) == []


def _writes_fail(item: Any) -> Any:
    """PlanFile.item whose file's writes fail after the header (ENOSPC)."""
    import errno

    def failing(self: Any, *args: Any) -> None:
        class Full:
            def write(self, text: str) -> int:
                raise OSError(errno.ENOSPC, "No space left on device")

            def close(self) -> None:
                pass

        if self._file is not None and not isinstance(self._file, Full):
            self._file.close()
            self._file = Full()
        item(self, *args)

    return failing


# -- a job the config file does not know -----------------------------------------------------
async def test_job_not_in_the_config_file_exit_2_nothing_done(
    tmp_path: Path, catalog_db, origin: OriginServer, rclone_s3: S3Target, s3_proxy
) -> None:
    """A mistyped --job (or TUI_BACKFILL_JOB) used to run silently with the top-level settings
    only, ignoring the [jobs.NAME] it meant; `status` read another job's (empty) state."""
    proxy = await s3_proxy(rclone_s3)
    ctx = Ctx(tmp_path, catalog_db(40), origin, proxy, rclone_s3)
    shared = tmp_path / "shared.toml"  # top-level settings shared by every job, and two jobs
    shared.write_text(
        f'bucket = "{rclone_s3.bucket}"\nendpoint_url = "{proxy.endpoint_url}"\n'
        'path_style = true\n\n[jobs.images]\nangles = "1-2"\n\n[jobs.thumbs]\nangles = "1"\n'
    )
    sections_only = tmp_path / "sections.toml"
    sections_only.write_text('[jobs.images]\nangles = "1-2"\n\n[jobs.thumbs]\nangles = "1"\n')
    source = [
        "--state", str(ctx.state), "--skus-db", str(ctx.catalog),
        "--skus-query", ACTIVE_SKUS_QUERY, "--origin", origin.url_template,
        "--limit-skus", "5", "--timeout", "1", "--backoff", "0.01",
    ]  # fmt: skip
    env = tool_env(rclone_s3)
    cases = [
        (["run", "--no-ui", "--config", str(shared), "--job", "imagse", *source], {}, "--job"),
        (["status", "--config", str(shared), "--job", "imagse", "--state", str(ctx.state)], {}, "--job"),
        (["run", "--no-ui", "--config", str(shared), *source], {"TUI_BACKFILL_JOB": "thumb"}, "TUI_BACKFILL_JOB"),
        (["run", "--no-ui", "--config", str(sections_only), "--job", "typo", *source,
          "--bucket", rclone_s3.bucket, "--endpoint-url", proxy.endpoint_url], {}, "--job"),
        (["status", "--config", str(sections_only), "--job", "typo", "--state", str(ctx.state)], {}, "--job"),
    ]  # fmt: skip
    for argv, extra, field in cases:
        result = await tool(*argv, env={**env, **extra})
        assert result.rc == 2, (argv, str(result))
        job = extra.get("TUI_BACKFILL_JOB") or argv[argv.index("--job") + 1]
        path = argv[argv.index("--config") + 1]
        assert result.err.splitlines() == [
            f"tui-backfill: error: {field}: {job!r} is not a job of {path}; known: images, thumbs"
        ], (argv, result.err)
        assert result.out == ""
    assert origin.gets == 0 and sum(proxy.requests.values()) == 0
    assert runs_in_state(ctx.state) == 0

    # the jobs it names, and any job of a file with shared settings that is no near miss
    for job in ("images", "nightly"):
        result = await tool(
            "run", "--no-ui", "--dry-run", "--config", str(shared), "--job", job, *source, env=env
        )
        assert result.rc == 0, str(result)
        assert result.snap["anglesPlanned"] == ("1-2" if job == "images" else "1-3")
