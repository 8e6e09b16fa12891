"""The OpenAPI 3.0 document of the HTTP control API, served at /api/openapi.json.

Written by hand from the same field table the server checks requests against (service.py), so
the two cannot drift on what POST .../run accepts; a schema-driven fuzz test runs against it.
"""

from __future__ import annotations

import copy
from typing import Any

from tui_backfill import __version__
from tui_backfill.frontends.service import (
    MAX_ANGLES_TEXT,
    MAX_LIMIT_OBJECTS,
    MAX_LIMIT_SKUS,
    RUN_FIELDS,
    run_fields,
)
from tui_backfill.outcomes import RunState
from tui_backfill.pipelines.config import JOB_NAME

BASE = "/api/rsr-image-backfill"
JOBS = "/api/jobs/{job}"
ASSET_INDEX = "/api/backfill-asset-index"
IMAGE_ROUTES = ("/api/rsr-image-stats", "/api/rsr-image-gap")  # and BASE/...
# The routes of the served job that exist for every job of the state file as JOBS/<name>.
GENERIC = ("run", "status", "pause", "resume", "hold", "concurrency", "failed", "runs")
_JOB_PARAMETER = {
    "name": "job",
    "in": "path",
    "required": True,
    "description": "a job of the server's state file; another than the served job is read "
    "through the state and driven through its command channel, never started here (run: 409)",
    "schema": {"type": "string", "pattern": JOB_NAME.pattern, "maxLength": 64},
}

_RUN_PROPERTIES: dict[str, dict[str, Any]] = {
    "limitSkus": {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_LIMIT_SKUS,
        "example": 500,
        "description": "SKUs scanned by the run (default: the server's --limit-skus, 2000)",
    },
    "angles": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_ANGLES_TEXT,
        "example": "1-3",
        "description": "angle spec such as 1-3, 1,2,3 or 1-2,4 (default 1-3)",
    },
    "concurrency": {
        "type": "integer",
        "minimum": 1,
        "description": "parallel origin fetches, at most the server's --max-concurrency "
        "(the document's maximum; default 3)",
    },
    "onlyMissing": {"type": "boolean", "description": "skip objects that exist (default true)"},
    "limitObjects": {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_LIMIT_OBJECTS,
        "example": 10000,
        "description": "hash index: objects scanned by the run (default: the server's "
        "--limit-objects, else all)",
    },
    "dryRun": {"type": "boolean", "description": "plan and check existence only; answers the plan"},
    "fresh": {
        "type": "boolean",
        "description": "abandon the job's unfinished run, start a new one",
    },
    "fromStart": {"type": "boolean", "description": "start the new run at the catalog's first SKU"},
}
assert set(_RUN_PROPERTIES) == set(RUN_FIELDS)

_ERROR = {"$ref": "#/components/schemas/Error"}
_SNAPSHOT = {"$ref": "#/components/schemas/Snapshot"}
_MISSING = {
    "missing": {"type": "integer", "description": "expected objects not in the bucket"},
    "fillable": {
        "type": "integer",
        "description": "missing objects not known to be absent at the origin (their latest "
        "attempt was not a 404): what a run can still fill",
    },
    "noRemoteUntracked": {
        "type": "integer",
        "description": "404s counted by runs from before the state kept absent keys (an upgrade "
        "from schema 2): up to this many fillable objects may be absent at the origin",
    },
    "expected": {"type": "integer", "description": "catalog SKUs x angles"},
    "coveragePercent": {"type": "number"},
}
_COVERAGE = {
    "type": "object",
    "properties": {
        **_MISSING,
        "job": {"type": "string"},
        "bucket": {"type": "string"},
        "keyTemplate": {"type": "string"},
        "anglesPlanned": {"type": "string"},
        "catalogSkus": {"type": "integer"},
        "total": {"type": "integer", "description": "the same as expected"},
        "present": {"type": "integer"},
        "unusable": {"type": "integer", "description": "items of unusable SKUs or keys"},
        "listRequests": {"type": "integer"},
    },
}
_GAP_PAGE = {
    "type": "object",
    "properties": {
        **_MISSING,
        "keys": {"type": "array", "items": {"type": "string"}},
        "nextAfter": {"type": "string", "nullable": True, "description": "the next page's after"},
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "invalid parameters (the error names the field)",
        401: "missing or wrong bearer token",
        404: "nothing there (the job has no runs)",
        409: "the job's state does not allow it (running, nothing to pause or resume)",
        413: "request body too large",
        502: "an outside system refused (S3 endpoint, bucket, credentials, catalog)",
        503: "the state file cannot be read (damaged, locked, from a newer version)",
    }
    return {str(code): _json(_ERROR, text[code]) for code in (*codes, 401, 503)}


def _no_body_post(summary: str, answer: str, *errors: int) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "responses": {
                "200": _json(_SNAPSHOT, answer),
                "202": _json({"type": "object"}, "sent to the process running the job"),
                **_errors(400, 409, 413, *errors),
            },
        }
    }


def _for_every_job(path_item: dict[str, Any]) -> dict[str, Any]:
    """A seed route's operations as the generic route's: the `job` path parameter, and 404
    (a job with no runs) among the answers."""
    item = copy.deepcopy(path_item)
    for operation in item.values():
        operation["parameters"] = [_JOB_PARAMETER, *operation.get("parameters", [])]
        operation["summary"] = f"{operation['summary']} (of the job named in the path)"
        operation["responses"].update(_errors(400, 404, 409))
    return item


_BATCH = {
    "type": "object",
    "required": [
        "success",
        "total",
        "updated",
        "skipped",
        "cursor",
        "hasMore",
        "errors",
        "dry_run",
    ],
    "properties": {
        "success": {"type": "boolean"},
        "total": {"type": "integer", "minimum": 0, "description": "objects in the batch"},
        "updated": {
            "type": "integer",
            "minimum": 0,
            "description": "index rows written (a dry run: rows that would be)",
        },
        "skipped": {"type": "integer", "minimum": 0},
        "cursor": {
            "type": "string",
            "nullable": True,
            "description": "give it as `cursor` for the next batch; null after the last",
        },
        "hasMore": {"type": "boolean"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "code", "message"],
                "properties": {
                    "key": {"type": "string"},
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                },
            },
        },
        "dry_run": {"type": "boolean"},
    },
}


def _asset_index() -> dict[str, Any]:
    from tui_backfill.pipelines.hash_index.batch import LIMIT_DEFAULT, LIMIT_MAX

    return {
        "get": {
            "summary": "One batch of the content-hash index (the seed's batch interface)",
            "description": "Lists up to `limit` objects under the job's prefix after `cursor`, "
            "hashes those the skip rule does not skip, upserts their rows (not in a dry run, "
            "which writes and creates nothing). Loop on `cursor` until `hasMore` is false. "
            "Answers only a request whose Host is the address the server is bound to and that "
            "has no cross-site Origin (403); 409 while a run of the job goes on.",
            "parameters": [
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": LIMIT_MAX,
                        "default": LIMIT_DEFAULT,
                    },
                },
                {
                    "name": "cursor",
                    "in": "query",
                    "required": False,
                    "description": "the previous answer's cursor (absent: from the start)",
                    "schema": {"type": "string"},
                },
                {
                    "name": "dry_run",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "boolean", "default": False},
                },
            ],
            "responses": {
                "200": _json(_BATCH, "the batch"),
                "403": _json(_ERROR, "a foreign Host or a cross-site Origin"),
                **_errors(400, 409, 502),
            },
        }
    }


def document(*, max_concurrency: int, pipeline: str = "mirror") -> dict[str, Any]:
    """The document of a server whose job is of `pipeline` and whose --max-concurrency is
    `max_concurrency`: an image job's has the seed's image routes, a hash-index job's the
    batch interface instead (the other's routes answer 409 there); both the generic routes,
    whose POST .../run takes the fields of the job's pipeline."""
    accepted = run_fields(pipeline)
    properties = {
        name: schema
        for name, schema in {
            **_RUN_PROPERTIES,
            "concurrency": {**_RUN_PROPERTIES["concurrency"], "maximum": max_concurrency},
        }.items()
        if name in accepted
    }
    run_schema = {"type": "object", "additionalProperties": False, "properties": properties}
    query_params = [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in properties.items()
    ]
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "tui-backfill control API",
            "version": __version__,
            "description": "Start, watch, pause and resume the image backfill job of one state "
            "file (the seed's routes and /api/jobs/{job}/...), and watch and drive the other "
            "jobs of that state file (/api/jobs/{job}/...).",
        },
        "paths": {
            f"{BASE}/run": {
                "post": {
                    "summary": "Start (or continue) the job's run; a dry run answers its plan",
                    "description": "Each field is given as a query parameter or in the JSON body, "
                    "not both (400 naming the field).",
                    "parameters": query_params,
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": run_schema}},
                    },
                    "responses": {
                        "200": _json(_SNAPSHOT, "the dry run's plan, with the status keys"),
                        "202": _json(_SNAPSHOT, "the run started (runId); watch /status"),
                        **_errors(400, 409, 413, 502),
                    },
                }
            },
            f"{BASE}/status": {
                "get": {
                    "summary": "The status snapshot of the job's latest run",
                    "responses": {"200": _json(_SNAPSHOT, "the snapshot"), **_errors(400, 404)},
                }
            },
            f"{BASE}/pause": _no_body_post(
                "Graceful stop: in-flight items finish, the checkpoint is persisted",
                "the paused run's snapshot",
            ),
            f"{BASE}/resume": _no_body_post(
                "Release a held run, or continue a paused or interrupted one",
                "the resumed run's snapshot",
                502,
            ),
            f"{BASE}/hold": _no_body_post(
                "Hold the run paused in place (the console's p key) until resume",
                "the held run's snapshot",
            ),
            f"{BASE}/concurrency": {
                "post": {
                    "summary": "Change the parallel origin fetches of the running job",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["concurrency"],
                                    "properties": {
                                        "concurrency": {
                                            "type": "integer",
                                            "minimum": 1,
                                            "maximum": max_concurrency,
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(_SNAPSHOT, "the run's snapshot"),
                        "202": _json({"type": "object"}, "sent to the process running the job"),
                        **_errors(400, 409, 413),
                    },
                }
            },
            f"{BASE}/failed": {
                "get": {
                    "summary": "Items whose attempts are exhausted (retried first by the next run)",
                    "responses": {
                        "200": _json({"type": "object"}, "the failed items"),
                        **_errors(400),
                    },
                }
            },
            f"{BASE}/runs": {
                "get": {
                    "summary": "Past runs of the job, newest first",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        }
                    ],
                    "responses": {"200": _json({"type": "object"}, "the runs"), **_errors(400)},
                }
            },
            "/api/rsr-image-stats": {
                "get": {
                    "summary": "Coverage: expected objects of the whole catalog, present, missing",
                    "responses": {
                        "200": _json(_COVERAGE, "the coverage"),
                        **_errors(400, 502),
                    },
                }
            },
            "/api/rsr-image-gap": {
                "get": {
                    "summary": "The missing keys, in pages",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                        },
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": _json(_GAP_PAGE, "a page of missing keys; nextAfter continues"),
                        **_errors(400, 502),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of the job",
                    "responses": {
                        "200": {
                            "description": "text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(400),
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
                },
                "Snapshot": {
                    "type": "object",
                    "description": "the status snapshot (exact keys of the brief, and more)",
                    "properties": {
                        "startedAt": {"type": "string"},
                        "lastUpdateAt": {"type": "string"},
                        "scannedSkus": {"type": "integer"},
                        "attemptedDownloads": {"type": "integer"},
                        "uploaded": {"type": "integer"},
                        "skippedExists": {"type": "integer"},
                        "noRemote": {"type": "integer"},
                        "errorsTotal": {"type": "integer"},
                        "errorsByCode": {
                            "type": "object",
                            "additionalProperties": {"type": "integer"},
                        },
                        "anglesPlanned": {"type": "string"},
                        "concurrency": {"type": "integer"},
                        "checkpoint": {"type": "object"},
                        "etaSkusRemaining": {"type": "integer"},
                        "plannedItems": {"type": "integer"},
                        "failedItems": {"type": "integer"},
                        "state": {
                            "type": "string",
                            "enum": [state.value for state in RunState],
                            "description": "interrupted: its process died without pausing "
                            "(crash, SIGKILL); resumable like paused",
                        },
                        "runId": {"type": "integer"},
                        # a hash-index job's (DESIGN.md, "Content-hash index")
                        "scannedObjects": {"type": "integer"},
                        "updated": {"type": "integer"},
                        "skipped": {"type": "integer"},
                        "bytesHashed": {"type": "integer"},
                        "orphans": {"type": "integer"},
                    },
                },
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }
    paths = doc["paths"]
    for route in GENERIC:
        paths[f"{JOBS}/{route}"] = _for_every_job(paths[f"{BASE}/{route}"])
    if pipeline == "hash-index":
        for route in GENERIC:
            del paths[f"{BASE}/{route}"]
        for path in IMAGE_ROUTES:
            del paths[path]
        paths[ASSET_INDEX] = _asset_index()
        doc["info"]["description"] = (
            "Start, watch, pause and resume the content-hash index job of one state file "
            "(/api/jobs/{job}/...), one batch at a time through the seed's batch interface ("
            f"{ASSET_INDEX}), and watch and drive the other jobs of that state file."
        )
    return doc
