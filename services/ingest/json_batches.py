"""One JSON object, or an NDJSON batch of them, through a mapper to committed events.

NDJSON (`application/x-ndjson`): each line is one message. The good lines are committed together in
one transaction (one raw message, the whole body); each bad line is answered with its problem and
kept in the quarantine on its own, so it can be fixed and replayed alone. A batch is never refused
whole for one bad line: the sender learns per line what happened.

Text the database cannot store is refused at the edge: a NUL character (`\\u0000`) anywhere is a 422
naming the field. Should the database still refuse a message's data, it is answered 422 and kept
(for NDJSON, each of the lines that were to be committed together, on its own), never "send it again".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.ingest.group_commit import Inbound, Unstorable
from services.ingest.intake import (
    Answer,
    Commit,
    IngestContext,
    Message,
    Rejected,
    nul_path,
    problem_answer,
)
from shared.outbox import OutboxEvent
from shared.problems import PROBLEM_JSON, Problem

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson")

# raw JSON of one message → its events, or a Problem saying what is wrong
Mapper = Callable[[IngestContext, str, bytes], list[OutboxEvent]]


def is_ndjson(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() in NDJSON_TYPES


def _mapped(mapper: Mapper, ctx: IngestContext, source: str, raw: bytes) -> list[OutboxEvent] | Problem:
    if (path := nul_path(raw)) is not None:
        field = ".".join(str(p) for p in path) or "<body>"
        message = "holds a NUL character (\\u0000), which ICC cannot store"
        return Problem(
            422,
            "validation",
            "Request body is not valid",
            f"invalid field(s): {field}",
            errors=[{"field": field, "message": message}],
        )
    try:
        return mapper(ctx, source, raw)
    except Problem as problem:
        return problem


def _unstorable(exc: Unstorable) -> Problem:
    return Problem(422, "unstorable", "Not storable", f"ICC cannot store this message: {exc}")


def _ids(events: list[OutboxEvent]) -> list[str]:
    return [str(e.event_id) for e in events]


async def process(
    ctx: IngestContext, message: Message, commit: Commit, *, replay: bool, mapper: Mapper
) -> Answer:
    if is_ndjson(message.content_type):
        return await _process_lines(ctx, message, commit, replay=replay, mapper=mapper)
    mapped = _mapped(mapper, ctx, message.source, message.body)
    if isinstance(mapped, Problem):
        answer = problem_answer(mapped, message.endpoint)
        answer.rejected.append(Rejected(message.body, message.content_type, mapped.status, answer.content))
        return answer
    item = Inbound(message.source, message.endpoint, message.content_type, message.body, mapped)
    try:
        inserted = await commit(item)
    except Unstorable as exc:
        answer = problem_answer(_unstorable(exc), message.endpoint)
        answer.rejected.append(Rejected(message.body, message.content_type, 422, answer.content))
        return answer
    duplicate = not inserted
    return Answer(
        202,
        {
            "status": "accepted",
            "event_id": str(mapped[0].event_id),
            "event_ids": _ids(mapped),
            "duplicate": duplicate,
        },
        committed=True,
        raw_id=item.raw_id,
        event_ids=[e.event_id for e in mapped],
    )


async def _process_lines(
    ctx: IngestContext, message: Message, commit: Commit, *, replay: bool, mapper: Mapper
) -> Answer:
    outcomes: list[dict[str, Any]] = []
    good: list[tuple[dict[str, Any], list[OutboxEvent], bytes]] = []
    rejected: list[Rejected] = []
    for number, line in enumerate(message.body.split(b"\n"), start=1):
        line = line.strip()
        if not line:
            continue
        mapped = _mapped(mapper, ctx, message.source, line)
        outcome: dict[str, Any] = {"line": number}
        outcomes.append(outcome)
        if isinstance(mapped, Problem):
            problem = mapped.body(message.endpoint)
            outcome.update(status="rejected", problem=problem)
            rejected.append(Rejected(line, "application/json", mapped.status, problem, outcome))
        else:
            good.append((outcome, mapped, line))
    if not outcomes:
        problem = Problem(422, "empty", "Nothing to ingest", "the NDJSON body has no lines")
        answer = problem_answer(problem, message.endpoint)
        answer.rejected.append(Rejected(message.body, message.content_type, 422, answer.content))
        return answer
    if replay and rejected:
        # a replay is all or nothing: the operator fixes what is wrong and replays again
        return Answer(
            422,
            {
                **Problem(422, "validation", "Lines still rejected", "").body(message.endpoint),
                "lines": outcomes,
            },
            PROBLEM_JSON,
        )
    events = [e for _, mapped, _ in good for e in mapped]
    answer = Answer(202, {"lines": outcomes}, rejected=rejected)
    if good:
        item = Inbound(message.source, message.endpoint, message.content_type, message.body, events)
        try:
            inserted = await commit(item)
        except Unstorable as exc:
            # refused together: each line is kept on its own, so replaying them tells which it was
            refusal = _unstorable(exc).body(message.endpoint)
            for outcome, _, line in good:
                outcome.update(status="rejected", problem=refusal)
                rejected.append(Rejected(line, "application/json", 422, refusal, outcome))
            good = []
        else:
            for outcome, mapped, _ in good:
                # the same event twice in one batch: the first line gets it, the second is a duplicate
                new = any(e.event_id in inserted for e in mapped)
                inserted -= {e.event_id for e in mapped}
                outcome.update(status="accepted" if new else "duplicate", event_ids=_ids(mapped))
            answer.committed, answer.raw_id = True, item.raw_id
            answer.event_ids = [e.event_id for e in events]
    if not good:
        answer.status, answer.media_type = 422, PROBLEM_JSON
        answer.content = {
            **Problem(422, "validation", "No line accepted", f"all {len(outcomes)} lines were rejected").body(
                message.endpoint
            ),
            "lines": outcomes,
        }
    answer.content["accepted"] = sum(1 for o in outcomes if o["status"] == "accepted")
    answer.content["duplicates"] = sum(1 for o in outcomes if o["status"] == "duplicate")
    answer.content["rejected"] = len(rejected)
    return answer
