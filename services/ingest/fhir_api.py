"""`POST /v1/pas/fhir`: FHIR R4 Encounters from a PAS, one at a time or in transaction / batch Bundles.

Answers are FHIR: an OperationOutcome for one Encounter or any error, a transaction-response /
batch-response Bundle for a Bundle. Status codes follow the FHIR REST rules: 400 for a body that is
not valid FHIR, 422 for a valid one ICC cannot use (unknown site, a resource type it does not take).

Idempotency: each Encounter version (id + meta.versionId, or the content when there is no version)
is processed once; a re-post gets the same event ids back, marked duplicate, and makes no event.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.ingest.event_time_bounds import EventTimeBounds
from services.ingest.fhir_encounter import (
    KnownEncounter,
    Unmappable,
    encounter_key,
    known_from_row,
    map_encounter,
)
from services.ingest.fhir_validation import (
    BundleEntry,
    EncounterFacts,
    FhirInvalid,
    Issue,
    parse_body,
    validate_entry,
)
from services.ingest.group_commit import Inbound, Unstorable
from services.ingest.hl7_adt import UnmappedLocation
from services.ingest.intake import (
    Answer,
    Commit,
    IngestContext,
    Message,
    Rejected,
    nul_path,
    run_live,
)
from services.ingest.location_source import list_unmapped
from shared.events import utcnow
from shared.outbox import OutboxEvent
from shared.problems import Problem
from shared.pseudonymise import keyed_mac

router = APIRouter()

FHIR_JSON = "application/fhir+json"
OUTCOME_SYSTEM = "https://icc.invalid/fhir/CodeSystem/ingest-outcome"
EVENT_ID_EXTENSION = "https://icc.invalid/fhir/StructureDefinition/event-id"
_STATUS_TEXT = {200: "200 OK", 400: "400 Bad Request", 422: "422 Unprocessable Entity"}
_PROBLEM_ISSUE_CODE = {401: "login", 403: "forbidden", 413: "too-long", 429: "throttled", 503: "transient"}


def operation_outcome(issues: list[Issue | dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [i.as_fhir() if isinstance(i, Issue) else i for i in issues],
    }


def outcome_issue(outcome: str, text: str, event_ids: list[uuid.UUID]) -> dict[str, Any]:
    """The informational issue saying what ICC did, with the event ids as extensions."""
    issue: dict[str, Any] = {
        "severity": "information",
        "code": "informational",
        "details": {"coding": [{"system": OUTCOME_SYSTEM, "code": outcome}], "text": text},
    }
    if event_ids:
        issue["extension"] = [{"url": EVENT_ID_EXTENSION, "valueUuid": f"urn:uuid:{i}"} for i in event_ids]
    return issue


def error_answer(status: int, issues: list[Issue], headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, operation_outcome(list(issues)), FHIR_JSON, headers or {})


def render_problem(problem: Problem, endpoint: str) -> Answer:
    """Authentication, size and rate-limit refusals as an OperationOutcome (Retry-After and such kept)."""
    code = _PROBLEM_ISSUE_CODE.get(problem.status, "processing")
    return error_answer(problem.status, [Issue(code, problem.detail)], problem.headers)


@dataclass
class EntryResult:
    entry: BundleEntry
    facts: EncounterFacts | None = None
    status: int = 200
    outcome: str = ""
    event_ids: list[uuid.UUID] = field(default_factory=list)
    version_id: str = ""
    issues: list[Issue] = field(default_factory=list)

    def text(self) -> str:
        n = len(self.event_ids)
        return {
            "accepted": f"accepted: {n} event(s)",
            "duplicate": f"already processed this version: the same {n} event(s), nothing new",
            "no-change": "accepted: nothing changed for capacity",
            "ignored": "accepted: this class or status does not concern beds or ED flow",
            "stale": "accepted: an older version than the last one processed; ignored",
        }.get(self.outcome, self.outcome)


class _Refused(Exception):
    """Raised inside the commit to refuse the whole message (a transaction, a single resource, a replay)."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("; ".join(i.diagnostics for i in issues))
        self.issues = issues


def _version_of(key: str, facts: EncounterFacts, resource: dict[str, Any] | None) -> str:
    if facts.version_id:
        return facts.version_id
    canonical = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)
    return "sha256:" + keyed_mac(key, canonical).hex()[:32]


async def _apply(
    conn: asyncpg.Connection,
    ctx: IngestContext,
    source: str,
    results: list[EntryResult],
    *,
    strict: bool,
    force_map_reload: bool,
    bounds: EventTimeBounds,
) -> list[OutboxEvent]:
    """Inside the commit: dedup by version, map against what is known, remember the new knowledge
    and count the locations the mapping lacks (a duplicate version maps nothing, so counts nothing)."""
    key = ctx.pseudonymisation_key
    mapper = ctx.locations.current(force=force_map_reload)
    todo = [r for r in results if r.facts is not None]
    keys = [encounter_key(key, source, r.facts) for r in todo if r.facts is not None]
    seen_versions = {
        (row["encounter_key"], row["version_id"]): row
        for row in await conn.fetch(
            """
            SELECT v.encounter_key, v.version_id, v.event_ids FROM fhir_encounter_version v
            JOIN unnest($1::text[], $2::text[]) AS u(k, ver) ON v.encounter_key = u.k AND v.version_id = u.ver
            """,
            keys,
            [r.version_id for r in todo],
        )
    }
    known: dict[str, KnownEncounter | None] = {
        row["encounter_key"]: known_from_row(dict(row))
        for row in await conn.fetch(
            "SELECT * FROM fhir_encounter_state WHERE encounter_key = any($1) FOR UPDATE", list(set(keys))
        )
    }
    changed: set[str] = set()
    versions: list[tuple[str, str, str, list[uuid.UUID]]] = []
    events: list[OutboxEvent] = []
    unmapped: list[UnmappedLocation] = []
    for result, state_key in zip(todo, keys, strict=True):
        assert result.facts is not None
        previous = seen_versions.get((state_key, result.version_id))
        if previous is not None:
            result.outcome, result.event_ids = "duplicate", list(previous["event_ids"])
            continue
        try:
            mapped = map_encounter(
                result.facts,
                known.get(state_key),
                mapper,
                key=key,
                source=source,
                version_id=result.version_id,
                received_at=bounds.received_at,
                bounds=bounds,
            )
        except Unmappable as exc:
            if strict:
                raise _Refused([exc.issue]) from exc
            result.status, result.outcome, result.issues = 422, "rejected", [exc.issue]
            continue
        result.outcome = mapped.outcome
        result.event_ids = [e.event_id for e in mapped.events]
        result.issues = mapped.warnings
        events.extend(mapped.events)
        unmapped.extend(mapped.unmapped)
        if mapped.known is not None and mapped.known != known.get(state_key):
            known[state_key] = mapped.known
            changed.add(state_key)
        versions.append((state_key, result.version_id, mapped.outcome, result.event_ids))
        seen_versions[(state_key, result.version_id)] = {"event_ids": result.event_ids}
    states = [(k, s) for k in changed if (s := known.get(k)) is not None]
    if states:
        await conn.execute(
            """
            INSERT INTO fhir_encounter_state
                (encounter_key, site_id, encounter_class, status, location, version_id)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[])
            ON CONFLICT (encounter_key) DO UPDATE SET site_id = excluded.site_id,
                encounter_class = excluded.encounter_class, status = excluded.status,
                location = excluded.location, version_id = excluded.version_id, updated_at = now()
            """,
            [k for k, _ in states],
            [s.site_id for _, s in states],
            [s.encounter_class for _, s in states],
            [s.status for _, s in states],
            [s.location.model_dump() if s.location is not None else None for _, s in states],
            [s.version_id for _, s in states],
        )
    if versions:
        await conn.execute(
            """
            INSERT INTO fhir_encounter_version (encounter_key, version_id, outcome, event_ids)
            SELECT k, v, o, string_to_array(e, ',')::uuid[]
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(k, v, o, e)
            ON CONFLICT DO NOTHING
            """,
            [v[0] for v in versions],
            [v[1] for v in versions],
            [v[2] for v in versions],
            [",".join(str(i) for i in v[3]) for v in versions],
        )
    await _count_unmapped(conn, source, unmapped)
    return events


async def _count_unmapped(conn: asyncpg.Connection, source: str, places: list[UnmappedLocation]) -> None:
    """List and count the locations the mapping lacks as HL7's bookkeeping does (same table, a
    `fhir.` counter), so `GET /v1/locations/unmapped` shows a FHIR feed's gaps too."""
    if not places:
        return
    await list_unmapped(conn, [(source, place) for place in places])
    await conn.execute(
        """
        INSERT INTO ingest_counter (source, name, value) VALUES ($1, 'fhir.unmapped_location', $2)
        ON CONFLICT (source, name) DO UPDATE
           SET value = ingest_counter.value + excluded.value, updated_at = now()
        """,
        source,
        len(places),
    )


def _entry_outcome(result: EntryResult) -> dict[str, Any]:
    if result.status != 200:
        return operation_outcome(list(result.issues))
    return operation_outcome([outcome_issue(result.outcome, result.text(), result.event_ids), *result.issues])


async def process(ctx: IngestContext, message: Message, commit: Commit, *, replay: bool) -> Answer:
    # what the event times are bounded by: the time of receipt, not the commit's after a queue, and
    # the receiving runtime's setting (read here: the commit runs in the group-commit writer's task)
    bounds = EventTimeBounds.at_receipt()
    if (path := nul_path(message.body)) is not None:
        return _rejected_whole(message, 400, [_nul_issue(message.body, path)])
    try:
        parsed = parse_body(message.body)
    except FhirInvalid as exc:
        return _rejected_whole(message, 400, exc.issues)
    results: list[EntryResult] = []
    for entry in parsed.entries:
        result = EntryResult(entry)
        try:
            result.facts = validate_entry(entry, parsed.bundle_type)
            if result.facts.version_id:
                result.version_id = result.facts.version_id
            else:
                resource = parsed.resource_of(entry)
                result.version_id = _version_of(ctx.pseudonymisation_key, result.facts, resource)
        except FhirInvalid as exc:
            result.status, result.outcome, result.issues = 400, "rejected", exc.issues
        results.append(result)
    strict = replay or parsed.bundle_type != "batch"
    invalid = [i for r in results if r.status != 200 for i in r.issues]
    if strict and invalid:
        return _rejected_whole(message, 400, invalid)

    async def prepare(conn: asyncpg.Connection) -> list[OutboxEvent]:
        return await _apply(
            conn,
            ctx,
            message.source,
            results,
            strict=strict,
            force_map_reload=replay,
            bounds=bounds,
        )

    item = Inbound(message.source, message.endpoint, message.content_type, message.body, [], prepare)
    if any(r.facts is not None for r in results):
        try:
            await commit(item)
        except _Refused as exc:
            return _rejected_whole(message, 422, exc.issues)
        except Unstorable as exc:  # "processing": final, sending it again unchanged would fail again
            return _rejected_whole(message, 422, [Issue("processing", f"ICC cannot store it: {exc}")])
    answer = Answer(200, {}, FHIR_JSON, committed=item.raw_id is not None, raw_id=item.raw_id)
    answer.event_ids = [i for r in results if r.outcome == "accepted" for i in r.event_ids]
    if parsed.bundle_type is None:
        (result,) = results
        answer.content = _entry_outcome(result)
        answer.headers["ETag"] = f'W/"{result.version_id}"'
        return answer
    entries = []
    for result in results:
        response: dict[str, Any] = {
            "status": _STATUS_TEXT[result.status],
            "outcome": _entry_outcome(result),
        }
        if result.status == 200:
            response["etag"] = f'W/"{result.version_id}"'
            if result.facts is not None and result.facts.resource_id:
                response["location"] = f"Encounter/{result.facts.resource_id}/_history/{result.version_id}"
        else:
            resource = parsed.resource_of(result.entry)
            raw = orjson.dumps(resource) if resource is not None else b"null"
            answer.rejected.append(Rejected(raw, FHIR_JSON, result.status, response["outcome"]))
        entries.append({"response": response})
    answer.content = {
        "resourceType": "Bundle",
        "type": f"{parsed.bundle_type}-response",
        "timestamp": utcnow().isoformat(),
        "entry": entries,
    }
    return answer


def _nul_issue(body: bytes, path: list[str | int]) -> Issue:
    """A NUL character (`\\u0000`) in a string: FHIR strings hold no control characters but tab, CR
    and LF, and no PostgreSQL text can hold one. The expression names the element."""
    data = orjson.loads(body)  # nul_path found it in parsed JSON
    root = data.get("resourceType") if isinstance(data, dict) else None
    steps = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    expression = (root if isinstance(root, str) else "") + steps
    return Issue(
        "value",
        "a string holds a NUL character (\\u0000), which FHIR does not allow and ICC cannot store",
        expression.removeprefix(".") or None,
    )


def _rejected_whole(message: Message, status: int, issues: list[Issue]) -> Answer:
    answer = error_answer(status, issues)
    answer.rejected.append(Rejected(message.body, message.content_type or FHIR_JSON, status, answer.content))
    return answer


@router.post(
    "/v1/pas/fhir",
    summary="FHIR R4 Encounter, or a transaction / batch Bundle of them, from a PAS",
    openapi_extra={
        "requestBody": {
            "content": {
                FHIR_JSON: {"schema": {"type": "object", "description": "Encounter or Bundle (FHIR R4 JSON)"}}
            }
        }
    },
    responses={
        200: {"description": "committed: OperationOutcome, or a transaction-/batch-response Bundle"},
        400: {"description": "not valid FHIR: OperationOutcome naming each element"},
        401: {},
        413: {},
        422: {"description": "valid FHIR that ICC cannot use (no site, another resource type)"},
        429: {},
    },
)
async def post_fhir(request: Request) -> Response:
    return await run_live(request, process, render_problem)
