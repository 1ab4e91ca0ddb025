"""Command-centre REST: the live state of wards, sites and the system, from the PostgreSQL projection."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import ORJSONResponse

from services.command_centre.bed_board import WardBoard, site_totals
from shared.auth import Scope, Tier
from shared.events import WardStateChanged
from shared.runtime import CurrentRuntime, CurrentUser, Runtime, readiness, require_scope

router = APIRouter()


async def _ward_states(runtime: Runtime, site_ids: list[str]) -> dict[str, WardStateChanged]:
    rows = await runtime.db.fetch("SELECT ward_id, summary FROM ward_state WHERE site_id = any($1)", site_ids)
    states = {r["ward_id"]: WardStateChanged.model_validate(r["summary"]) for r in rows}
    for site_id in site_ids:
        for ward in runtime.org.sites_by_id[site_id].wards:
            if ward.id not in states:  # never reported: the bed base with every bed unoccupied
                states[ward.id] = WardBoard(ward=ward, system_id=runtime.org.system.id).summary()
    return states


def _site_view(runtime: Runtime, site_id: str, states: dict[str, WardStateChanged]) -> dict[str, Any]:
    site = runtime.org.sites_by_id[site_id]
    wards = [states[w.id] for w in site.wards]
    return {
        "site_id": site.id,
        "name": site.name,
        "totals": site_totals(wards),
        "wards": [
            {
                "name": w.name,
                "type": w.type.value,
                "specialty": w.specialty,
                **states[w.id].model_dump(mode="json"),
            }
            for w in site.wards
        ],
    }


@router.get("/v1/sites/{site_id}/state", summary="Live state of one site and its wards")
async def site_state(site_id: str, runtime: CurrentRuntime, user: CurrentUser) -> dict[str, Any]:
    require_scope(user, runtime, Scope(Tier.site, site_id))
    states = await _ward_states(runtime, [site_id])
    return _site_view(runtime, site_id, states)


@router.get("/v1/wards/{ward_id}/state", summary="Live state of one ward")
async def ward_state(ward_id: str, runtime: CurrentRuntime, user: CurrentUser) -> dict[str, Any]:
    require_scope(user, runtime, Scope(Tier.ward, ward_id))
    ward = runtime.org.wards[ward_id]
    states = await _ward_states(runtime, [ward.site_id])
    return {"name": ward.name, "type": ward.type.value, **states[ward_id].model_dump(mode="json")}


@router.get(
    "/v1/systems/{system_id}/state", summary="Live state of the system (ICB), rolled up from its sites"
)
async def system_state(system_id: str, runtime: CurrentRuntime, user: CurrentUser) -> dict[str, Any]:
    require_scope(user, runtime, Scope(Tier.system, system_id))
    site_ids = [s.id for s in runtime.org.sites]
    states = await _ward_states(runtime, site_ids)
    sites = [_site_view(runtime, site_id, states) for site_id in site_ids]
    return {
        "system_id": system_id,
        "name": runtime.org.system.name,
        "totals": site_totals(list(states.values())),
        "sites": [{k: v for k, v in s.items() if k != "wards"} for s in sites],
    }


@router.get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
async def readyz(runtime: CurrentRuntime) -> ORJSONResponse:
    return await readiness(runtime)


@router.get("/v1/consumer", summary="Consumer progress of this replica")
async def consumer_status(runtime: CurrentRuntime, user: CurrentUser) -> dict[str, Any]:
    consumer = runtime.extra["consumer"]
    stats = consumer.stats
    return {
        "running": consumer.running,
        "applied": stats.applied,
        "skipped_duplicates": stats.skipped_duplicates,
        "dead_lettered": stats.dead_lettered,
        "broker_resets": stats.resets,
        "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in consumer.positions),
    }
