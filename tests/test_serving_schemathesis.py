"""Schemathesis over the service's OpenAPI schema: generated requests, valid and invalid, to
every operation with an admin key (it holds every scope). Not one may get a 5xx, and every
answer must match the schema (documented status, content type and body).

The counts of cases and of server errors are printed (``pytest -s``) for the README.
"""

from __future__ import annotations

import collections

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from serving_helpers import ADMIN_KEY, KEYS, bearer, ready_home, stub_forget

from recsys.serving.app import create_app
from recsys.serving.settings import ServiceSettings

# Per operation and generation mode (operations without inputs yield one case).
EXAMPLES = 50
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_no_generated_request_gets_a_server_error(tmp_path, monkeypatch):
    stub_forget(monkeypatch)
    paths, _ = ready_home(tmp_path / "home")
    app = create_app(ServiceSettings(paths=paths, api_keys=KEYS, drain_interval_s=3600.0))
    runtime = app.state.runtime
    runtime.start()
    tried: collections.Counter[str] = collections.Counter()
    server_errors: list[str] = []
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @given(case=operation.as_strategy(generation_mode=mode))
                @hypothesis_settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    suppress_health_check=list(HealthCheck),
                )
                def probe(case) -> None:
                    response = case.call(headers=bearer(ADMIN_KEY))
                    label = case.operation.label
                    tried[label] += 1
                    if response.status_code >= 500:
                        server_errors.append(f"{label} -> {response.status_code} {response.text}")
                    case.validate_response(response, checks=CHECKS)

                try:
                    probe()
                except Unsatisfiable:  # negative mode: /healthz has nothing to make invalid
                    assert mode is GenerationMode.NEGATIVE
    finally:
        runtime.close()
    print(f"\nschemathesis: {tried.total()} cases, {len(server_errors)} server errors; {tried}")
    assert tried.total() >= 300
    assert not server_errors, "\n".join(server_errors)
