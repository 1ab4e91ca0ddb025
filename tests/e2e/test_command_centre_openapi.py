"""The command centre's OpenAPI document describes what its endpoints answer, and a running command
centre's real answers validate against the models the document names, so the two cannot drift."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, TypeAdapter

from icc.embedded import Broker
from icc.stack import Stack
from services.command_centre.schemas import (
    AsOfSiteState,
    ConsumerStatus,
    Declaration,
    Documented,
    EscalationDetail,
    EscalationList,
    History,
    LiveSiteState,
    OpelView,
    SystemState,
    WardState,
    Withdrawn,
)
from shared.auth import Role
from shared.opel import OpelResult
from shared.secrets_store import Secrets
from tests.conftest import eventually, make_settings
from tests.helpers import bed_event, post_signed, token

pytestmark = pytest.mark.e2e

SITE = "RXN01"
WARD = "RXN01-AMU"

DOCUMENTED: dict[tuple[str, str], tuple[str, list[type[BaseModel]]]] = {
    ("get", "/v1/wards/{ward_id}/state"): ("200", [WardState]),
    ("get", "/v1/sites/{site_id}/state"): ("200", [LiveSiteState, AsOfSiteState]),
    ("get", "/v1/systems/{system_id}/state"): ("200", [SystemState]),
    ("get", "/v1/{kind}/{scope_id}/opel"): ("200", [OpelView]),
    ("post", "/v1/{kind}/{scope_id}/opel/declared"): ("201", [Declaration]),
    ("delete", "/v1/{kind}/{scope_id}/opel/declared"): ("200", [Withdrawn]),
    ("get", "/v1/{kind}/{scope_id}/history"): ("200", [History]),
    ("get", "/v1/consumer"): ("200", [ConsumerStatus]),
    ("get", "/v1/escalations"): ("200", [EscalationList]),
    ("post", "/v1/escalations"): ("201", [EscalationDetail]),
    ("get", "/v1/escalations/{escalation_id}"): ("200", [EscalationDetail]),
    ("post", "/v1/escalations/{escalation_id}/acknowledge"): ("200", [EscalationDetail]),
}


def objects(doc: dict[str, Any], schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The named object schemas `schema` stands for: its `$ref`, or each of its `anyOf` but null."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        return [(name, doc["components"]["schemas"][name])]
    return [found for option in schema.get("anyOf", []) for found in objects(doc, option)]


def properties(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    ((_, found),) = objects(doc, schema)
    props: dict[str, dict[str, Any]] = found["properties"]
    return props


def answer(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    code, _ = DOCUMENTED[(method, path)]
    schema: dict[str, Any] = doc["paths"][path][method]["responses"][code]["content"]["application/json"][
        "schema"
    ]
    return schema


def test_a_documented_answer_is_sent_as_the_plain_dict_it_was() -> None:
    """The routes return `Documented` so that FastAPI serialises their dicts exactly as it did
    `dict[str, Any]` (aware datetimes with Z, NaN as null): documenting them changed no byte."""
    value = {
        "at": datetime(2026, 11, 24, 2, 0, tzinfo=UTC),
        "pct": 1e-5,
        "nan": float("nan"),
        "nested": [{"level": None, "n": 3}],
    }
    assert TypeAdapter(Documented).dump_json(value) == TypeAdapter(dict[str, Any]).dump_json(value)


async def test_the_openapi_document_names_a_model_with_the_expected_fields_for_each_answer(
    stack: Stack,
) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{stack.url_of('command-centre')}/openapi.json")
    assert response.status_code == 200, response.text
    doc = response.json()

    for (method, path), (_, models) in DOCUMENTED.items():
        named = [name for name, _ in objects(doc, answer(doc, method, path))]
        assert named == [m.__name__ for m in models], (method, path)

    ward = properties(doc, answer(doc, "get", "/v1/wards/{ward_id}/state"))
    assert {"ward_id", "name", "beds", "counts", "available", "as_of", "metrics"} <= set(ward)
    ward_figures = properties(doc, ward["metrics"])
    assert {"patients", "admissions_today", "outliers", "ncr_patients"} <= set(ward_figures)
    assert not {"ward_id", "beds_total", "counts", "available"} & set(ward_figures)

    (_, live), (_, as_of) = objects(doc, answer(doc, "get", "/v1/sites/{site_id}/state"))
    assert {"version", "metrics", "opel", "wards"} <= set(live["properties"])
    assert {"basis", "events_applied", "metrics", "opel", "wards"} <= set(as_of["properties"])
    site_metrics = properties(doc, live["properties"]["metrics"])
    assert {"ga_occupancy_pct", "ed_4h_performance_pct", "mean_handover_minutes"} <= set(site_metrics)
    assert "as_of" not in site_metrics  # published beside the metrics
    site_opel = properties(doc, live["properties"]["opel"])
    assert "breakdown" in properties(doc, site_opel["computed"])
    as_of_ward = properties(doc, as_of["properties"]["wards"]["items"])
    assert {"ward_id", "beds_total", "counts", "patients", "beds"} <= set(as_of_ward)

    system = properties(doc, answer(doc, "get", "/v1/systems/{system_id}/state"))
    assert {"metrics", "opel", "sites"} <= set(system)
    assert "sites" in properties(doc, properties(doc, system["opel"])["computed"])

    opel = properties(doc, answer(doc, "get", "/v1/{kind}/{scope_id}/opel"))
    assert {"scope", "as_of", "computed", "declared", "effective_level"} <= set(opel)
    computed = [name for name, _ in objects(doc, opel["computed"])]
    assert computed == ["OpelResult", "SystemOpelResult"]

    history = properties(doc, answer(doc, "get", "/v1/{kind}/{scope_id}/history"))
    assert {"scope", "metric", "from", "to", "points"} <= set(history)
    assert {"at", "value"} <= set(properties(doc, history["points"]["items"]))

    consumer = properties(doc, answer(doc, "get", "/v1/consumer"))
    assert {"applied", "set_aside", "partitions", "owned_sites"} <= set(consumer)
    escalation = properties(doc, answer(doc, "get", "/v1/escalations/{escalation_id}"))
    assert {"id", "status", "scope", "timeline"} <= set(escalation)


async def test_real_answers_validate_against_the_documented_models(
    stack: Stack, test_secrets: Secrets
) -> None:
    cc = stack.url_of("command-centre")
    headers = {"Authorization": f"Bearer {token(test_secrets, Role.admin, 'system:QXN')}"}
    async with httpx.AsyncClient(timeout=30) as client:

        async def get(path: str, **params: str) -> dict[str, Any]:
            response = await client.get(f"{cc}{path}", params=params, headers=headers)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        posted = await post_signed(
            client,
            f"{stack.url_of('ingest')}/v1/bed-events",
            test_secrets,
            bed_event(f"{WARD}-B1-1", "occupied"),
        )
        assert posted.status_code == 202, posted.text

        async def system_reported() -> dict[str, Any] | None:
            view = await get("/v1/systems/QXN/state")
            return view if view["metrics"] is not None else None

        system = SystemState.model_validate(await eventually(system_reported))
        assert {s.site_id for s in system.sites} == {SITE, "RXN02"}

        site = LiveSiteState.model_validate(await get(f"/v1/sites/{SITE}/state"))
        assert site.metrics is not None and site.metrics.ga_occupancy_pct is not None
        assert len(site.wards) == 14
        ward = WardState.model_validate(await get(f"/v1/wards/{WARD}/state"))
        assert ward.metrics is not None and ward.counts.occupied == 1
        past = AsOfSiteState.model_validate(
            await get(f"/v1/sites/{SITE}/state", as_of=datetime.now(UTC).isoformat(), basis="known")
        )
        assert past.metrics.beds_occupied == 1

        site_opel = OpelView.model_validate(await get(f"/v1/sites/{SITE}/opel"))
        assert isinstance(site_opel.computed, OpelResult) and site_opel.computed.breakdown
        OpelView.model_validate(await get("/v1/systems/QXN/opel"))

        declared = await client.post(
            f"{cc}/v1/sites/{SITE}/opel/declared", headers=headers, json={"level": 3, "reason": "test"}
        )
        assert declared.status_code == 201, declared.text
        declaration = Declaration.model_validate(declared.json())
        withdrawn = await client.delete(f"{cc}/v1/sites/{SITE}/opel/declared", headers=headers)
        assert withdrawn.status_code == 200, withdrawn.text
        assert Withdrawn.model_validate(withdrawn.json()).withdrawn == [declaration.id]

        async def site_level() -> dict[str, Any] | None:
            view = await get(f"/v1/sites/{SITE}/history", metric="opel_level")
            return view if view["points"] else None

        History.model_validate(await eventually(site_level))
        ConsumerStatus.model_validate(await get("/v1/consumer"))

        raised = await client.post(
            f"{cc}/v1/escalations", headers=headers, json={"scope": f"site:{SITE}", "reason": "CT down"}
        )
        assert raised.status_code == 201, raised.text
        escalation = EscalationDetail.model_validate(raised.json())
        EscalationDetail.model_validate(await get(f"/v1/escalations/{escalation.id}"))
        acknowledged = await client.post(f"{cc}/v1/escalations/{escalation.id}/acknowledge", headers=headers)
        assert acknowledged.status_code == 200, acknowledged.text
        assert EscalationDetail.model_validate(acknowledged.json()).timeline[-1].action == "acknowledged"
        listed = EscalationList.model_validate(await get("/v1/escalations", scope=f"site:{SITE}"))
        assert escalation.id in {e.id for e in listed.escalations}


@pytest.fixture
def quiet_stack(tmp_path: Path, database_url: str, broker: Broker, secrets_file: Path) -> Iterator[Stack]:
    """A stack whose state tick waits far longer than the test: nothing is published unless an event
    arrives, so the answers keep the shape they have before anything has reported."""
    stack = Stack(
        make_settings(tmp_path, database_url, broker.bootstrap, secrets_file, ICC_STATE_TICK_SECONDS=600.0)
    )
    stack.start_infrastructure()
    stack.start_services()
    yield stack
    stack.stop()


async def test_answers_before_anything_has_reported_validate_too(
    quiet_stack: Stack, test_secrets: Secrets
) -> None:
    cc = quiet_stack.url_of("command-centre")
    headers = {"Authorization": f"Bearer {token(test_secrets, Role.admin, 'system:QXN')}"}
    async with httpx.AsyncClient(timeout=30) as client:
        ward = await client.get(f"{cc}/v1/wards/{WARD}/state", headers=headers)
        site = await client.get(f"{cc}/v1/sites/{SITE}/state", headers=headers)
        system = await client.get(f"{cc}/v1/systems/QXN/state", headers=headers)
    for response in (ward, site, system):
        assert response.status_code == 200, response.text
    never_reported = WardState.model_validate(ward.json())
    assert never_reported.version == 0 and never_reported.as_of is None
    assert LiveSiteState.model_validate(site.json()).metrics is None
    assert SystemState.model_validate(system.json()).metrics is None
