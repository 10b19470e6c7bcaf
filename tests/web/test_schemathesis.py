"""The JSON API fuzzed from its own OpenAPI document (schemathesis, in-process ASGI): no 5xx,
only documented status codes, responses that match their schemas."""

from __future__ import annotations

import asyncio

import schemathesis
from hypothesis import HealthCheck, settings

from conveyor.web import dashboard

from .apps import build, populate
from .conftest import BASIC, config

APP = build("memory://")
asyncio.run(populate(APP))
ASGI = dashboard(APP, config())
schema = schemathesis.openapi.from_asgi("/api/openapi.json", ASGI, headers=BASIC)


@schema.parametrize()
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi(case: schemathesis.Case) -> None:
    case.call_and_validate(headers=BASIC)
