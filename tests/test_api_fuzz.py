"""A schema-driven fuzz run of the HTTP control API: schemathesis (`st run`) against the OpenAPI
document a real `serve` process serves (rclone behind the counting proxy, the origin, a small
catalog), of an image job and of a hash-index job (whose document has the seed's batch
interface instead of the image routes). No 5xx, every response as the document says (status
code, content type, schema), schema-invalid requests refused, every operation exercised, and
the server still answers after.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import MakeApi

from tui_backfill.frontends.api import ASSET_INDEX, BASE

SKUS = 10  # a run the fuzzer starts finishes within a second (409s while it goes on)
MAX_EXAMPLES = 12  # per operation: each parametrised one still gets >= 19 requests; ~10 s
SEED = 20_261_126  # with --workers 1, the same requests every time
ST = Path(sys.executable).with_name("st")
HOOKS = Path(__file__).with_name("fuzz_hooks.py")
# Every check but positive_data_acceptance: a schema-valid request may still be refused, and
# rightly so, for what a schema cannot say (an angle spec such as "3-1" or "0", a field given
# both in the query and the body).
CHECKS = ("--checks", "all", "--exclude-checks", "positive_data_acceptance")
MIN_FUZZED = 10  # requests to each operation that takes parameters or a body, at least


def _interactions(events: Path) -> dict[str, list[dict[str, Any]]]:
    """The requests the run made (with their responses), by operation ("GET /path")."""
    by_operation: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for line in events.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if finished is None:
            continue
        recorder = finished["recorder"]
        by_operation[recorder["label"]] += recorder.get("interactions", {}).values()
    return by_operation


@pytest.mark.parametrize("pipeline", ["mirror", "hash-index"])
async def test_schemathesis_finds_no_5xx_and_the_api_matches_its_document(
    make_api: MakeApi, tmp_path: Path, pipeline: str
) -> None:
    assert ST.exists(), f"no {ST}: schemathesis is a dev dependency (pip install -e '.[dev]')"
    if pipeline == "mirror":
        _, api = await make_api(SKUS, limit=SKUS)
    else:
        job, api = await make_api(1, index_db=tmp_path / "index.sqlite3")
        client = job.direct.client()
        for i in range(SKUS):  # batches and runs the fuzzer starts hash these
            client.put_object(Bucket=job.bucket, Key=f"assets/{i:03d}.bin", Body=b"x" * i)
    code, document = await api.call("GET", "/api/openapi.json")
    assert code == 200, document
    operations = {
        f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item
    }
    reports = tmp_path / "st"
    args = [
        "run", f"{api.url}/api/openapi.json",
        *CHECKS,
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--workers", "1",
        "--generation-database", "none",
        "--request-timeout", "150",
        "--no-color",
        "--report", "json,ndjson",
        "--report-json-path", str(reports / "run.json"),
        "--report-ndjson-path", str(reports / "events.ndjson"),
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        str(ST), *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path, env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 240)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("st run still running after 240s") from None
    output = out.decode(errors="replace")
    served = api.proc.err_path.read_text(errors="replace")
    assert proc.returncode == 0, f"{output[-8000:]}\nserve's stderr: {served[-3000:]}"

    report = json.loads((reports / "run.json").read_text())
    assert report["exit_code"] == 0 and report["complete"], report
    assert report["failures"] == [] and report["errors"] == [], report
    assert report["operations"]["selected"] == report["operations"]["tested"] == len(operations)
    assert report["operations"]["errored"] == 0, report["operations"]
    requests = _interactions(reports / "events.ndjson")
    assert set(requests) == operations
    for operation, done in requests.items():
        method, path = operation.split(" ", 1)
        own = [r for r in done if r["request"]["method"] == method]  # not the 405 probes
        spec = document["paths"][path][method.lower()]
        least = MIN_FUZZED if "parameters" in spec or "requestBody" in spec else 1
        assert len(own) >= least, (operation, len(own))
    statuses = collections.Counter(
        (operation, r["response"]["status_code"])
        for operation, done in requests.items()
        for r in done
        if r.get("response")
    )
    assert not [key for key in statuses if key[1] >= 500], statuses
    assert api.proc.alive, served
    assert "API error" not in served and "Traceback" not in served, served
    if pipeline == "hash-index":
        batches = f"GET {ASSET_INDEX}"
        assert statuses[(batches, 200)], f"no generated request got a batch: {statuses}"
        return
    run = f"POST {BASE}/run"
    assert statuses[(run, 202)], f"no generated request started a run: {statuses}"
    code, status = await api.call("GET", f"{BASE}/status")
    assert code == 200 and status["runId"] >= 1, (code, status)
