"""Schemathesis hooks of tests/test_api_fuzz.py (`st run` loads this file: SCHEMATHESIS_HOOKS).

POST .../run takes each field as a query parameter or in the JSON body, not both (a 400 naming
the field), which OpenAPI 3.0 cannot say. Without this hook most requests the fuzzer generates
for it carry some field twice, get that 400, and never reach the run itself.
"""

from __future__ import annotations

import schemathesis
from schemathesis import Case
from schemathesis.hooks import HookContext

RUN_PATHS = ("/api/rsr-image-backfill/run", "/api/jobs/{job}/run")


@schemathesis.hook
def map_case(context: HookContext, case: Case) -> Case:
    if case.path in RUN_PATHS and isinstance(case.body, dict) and isinstance(case.query, dict):
        case.query = {name: value for name, value in case.query.items() if name not in case.body}
    return case
