"""WardBoard: bed changes applied by event time, order- and duplicate-independent summaries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.command_centre.bed_board import Applied, BedRecord, WardBoard, site_totals
from shared.events import BedStatus, WardStateChanged
from shared.organisation import Ward

pytestmark = pytest.mark.unit

T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
SYSTEM = "QXN"


def make_ward(ward_id: str = "S1-W1", *, site_id: str = "S1", beds_per_bay: int = 4) -> Ward:
    return Ward(
        id=ward_id,
        name="W",
        pas_code="W1",
        specialty="x",
        type="general_acute",
        bays=1,
        beds_per_bay=beds_per_bay,
        site_id=site_id,
    )


def rec(status: BedStatus, minutes: int = 0, event_id: uuid.UUID | None = None) -> BedRecord:
    return BedRecord(status, T0 + timedelta(minutes=minutes), event_id or uuid.uuid4())


@pytest.fixture
def ward() -> Ward:
    return make_ward()


@pytest.fixture
def board(ward: Ward) -> WardBoard:
    return WardBoard(ward=ward, system_id=SYSTEM)


def test_small_ward_has_the_expected_beds(ward: Ward) -> None:
    assert [b.id for b in ward.bed_list] == ["S1-W1-B1-1", "S1-W1-B1-2", "S1-W1-B1-3", "S1-W1-B1-4"]
    assert all(b.site_id == "S1" and b.ward_id == "S1-W1" for b in ward.bed_list)


def test_first_report_of_a_new_status_is_a_change(board: WardBoard) -> None:
    assert board.apply("S1-W1-B1-1", rec(BedStatus.occupied)) is Applied.changed
    assert board.status_of("S1-W1-B1-1") is BedStatus.occupied
    assert board.as_of == T0


def test_first_report_of_unoccupied_is_only_recorded(board: WardBoard) -> None:
    # A bed that never reported already counts as unoccupied, so the ward picture does not change.
    assert board.apply("S1-W1-B1-1", rec(BedStatus.unoccupied)) is Applied.recorded
    assert board.beds["S1-W1-B1-1"].occurred_at == T0


def test_late_older_event_is_stale_and_changes_nothing(board: WardBoard) -> None:
    newer = rec(BedStatus.occupied, minutes=10)
    board.apply("S1-W1-B1-1", newer)
    before = board.summary()

    outcome = board.apply("S1-W1-B1-1", rec(BedStatus.closed, minutes=5))

    assert outcome is Applied.stale
    assert board.beds["S1-W1-B1-1"] == newer
    assert board.status_of("S1-W1-B1-1") is BedStatus.occupied
    assert board.as_of == T0 + timedelta(minutes=10)
    assert board.summary() == before


def test_exact_duplicate_is_stale(board: WardBoard) -> None:
    record = rec(BedStatus.occupied)
    assert board.apply("S1-W1-B1-1", record) is Applied.changed
    assert board.apply("S1-W1-B1-1", record) is Applied.stale


def test_newer_event_with_same_status_is_recorded(board: WardBoard) -> None:
    board.apply("S1-W1-B1-1", rec(BedStatus.occupied, minutes=0))
    later = rec(BedStatus.occupied, minutes=7)

    assert board.apply("S1-W1-B1-1", later) is Applied.recorded
    assert board.beds["S1-W1-B1-1"] == later
    assert board.as_of == T0 + timedelta(minutes=7)


def test_newer_event_with_other_status_is_changed(board: WardBoard) -> None:
    board.apply("S1-W1-B1-1", rec(BedStatus.occupied, minutes=0))

    assert board.apply("S1-W1-B1-1", rec(BedStatus.housekeeping, minutes=1)) is Applied.changed
    assert board.status_of("S1-W1-B1-1") is BedStatus.housekeeping


def test_tie_on_time_is_broken_by_event_id(board: WardBoard) -> None:
    low = uuid.UUID("00000000-0000-4000-8000-000000000001")
    high = uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff")
    # Higher id first: the lower id at the same time loses.
    assert board.apply("S1-W1-B1-1", rec(BedStatus.closed, 0, high)) is Applied.changed
    assert board.apply("S1-W1-B1-1", rec(BedStatus.occupied, 0, low)) is Applied.stale
    assert board.status_of("S1-W1-B1-1") is BedStatus.closed

    # Lower id first: the higher id at the same time wins.
    other = WardBoard(ward=board.ward, system_id=SYSTEM)
    assert other.apply("S1-W1-B1-1", rec(BedStatus.occupied, 0, low)) is Applied.changed
    assert other.apply("S1-W1-B1-1", rec(BedStatus.closed, 0, high)) is Applied.changed
    assert other.status_of("S1-W1-B1-1") is BedStatus.closed


def test_as_of_does_not_go_back_for_an_older_event_on_another_bed(board: WardBoard) -> None:
    board.apply("S1-W1-B1-1", rec(BedStatus.occupied, minutes=30))
    assert board.apply("S1-W1-B1-2", rec(BedStatus.occupied, minutes=10)) is Applied.changed
    assert board.as_of == T0 + timedelta(minutes=30)


def test_summary_of_an_empty_board_counts_every_bed_unoccupied(board: WardBoard) -> None:
    summary = board.summary()

    assert summary.ward_id == "S1-W1"
    assert summary.system_id == SYSTEM
    assert summary.version == 0
    assert summary.beds_total == 4
    assert summary.available == 4
    assert summary.counts.unoccupied == 4
    assert summary.counts.occupied == 0
    assert set(summary.beds.values()) == {BedStatus.unoccupied}
    assert summary.as_of == datetime.fromtimestamp(0, UTC)


def test_summary_counts(board: WardBoard) -> None:
    board.apply("S1-W1-B1-1", rec(BedStatus.occupied, 1))
    board.apply("S1-W1-B1-2", rec(BedStatus.closed, 2))
    board.apply("S1-W1-B1-3", rec(BedStatus.housekeeping, 3))
    board.version = 5

    summary = board.summary()

    assert summary.beds_total == 4
    assert summary.counts.occupied == 1
    assert summary.counts.closed == 1
    assert summary.counts.housekeeping == 1
    assert summary.counts.unoccupied == 1  # B1-4 never reported
    assert summary.counts.isolated == summary.counts.contaminated == 0
    assert summary.available == summary.counts.unoccupied == 1
    assert summary.version == 5
    assert summary.as_of == T0 + timedelta(minutes=3)
    assert summary.beds == {
        "S1-W1-B1-1": BedStatus.occupied,
        "S1-W1-B1-2": BedStatus.closed,
        "S1-W1-B1-3": BedStatus.housekeeping,
        "S1-W1-B1-4": BedStatus.unoccupied,
    }


def test_summary_ignores_beds_not_in_the_ward(board: WardBoard) -> None:
    board.apply("ELSEWHERE-B1-1", rec(BedStatus.occupied))

    summary = board.summary()

    assert "ELSEWHERE-B1-1" not in summary.beds
    assert summary.beds_total == 4
    assert summary.counts.occupied == 0


def _summary(ward: Ward, statuses: dict[str, BedStatus]) -> WardStateChanged:
    board = WardBoard(ward=ward, system_id=SYSTEM)
    for i, (bed_id, status) in enumerate(statuses.items()):
        board.apply(bed_id, rec(status, i))
    return board.summary()


def test_site_totals_sum_wards_and_open_beds_exclude_closed() -> None:
    a = make_ward("S1-A")
    b = make_ward("S1-B", beds_per_bay=3)
    wards = [
        _summary(a, {"S1-A-B1-1": BedStatus.occupied, "S1-A-B1-2": BedStatus.closed}),
        _summary(b, {"S1-B-B1-1": BedStatus.closed, "S1-B-B1-2": BedStatus.isolated}),
    ]

    totals = site_totals(wards)

    assert totals == {
        "beds_total": 7,
        "available": 3,  # two in A, one in B
        "occupied": 1,
        "unoccupied": 3,
        "closed": 2,
        "housekeeping": 0,
        "isolated": 1,
        "contaminated": 0,
        "open_beds": 5,
    }


def test_site_totals_of_no_wards_are_zero() -> None:
    totals = site_totals([])
    assert totals["beds_total"] == 0
    assert totals["open_beds"] == 0
    assert set(totals) == {"beds_total", "available", "open_beds", *(s.value for s in BedStatus)}


# --- property: any order, any duplicates, same board ------------------------------------------------

PROPERTY_WARD = make_ward()
BED_IDS = [b.id for b in PROPERTY_WARD.bed_list]
TIMES = [T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)]

bed_events = st.lists(
    st.tuples(
        st.sampled_from(BED_IDS),
        st.builds(BedRecord, st.sampled_from(list(BedStatus)), st.sampled_from(TIMES), st.uuids()),
    ),
    max_size=12,
    unique_by=lambda e: e[1].event_id,  # one event id is one event
)


def _sort_key(event: tuple[str, BedRecord]) -> tuple[datetime, bytes]:
    return event[1].occurred_at, event[1].event_id.bytes


@settings(max_examples=300, deadline=None, database=None)
@given(events=bed_events, data=st.data())
def test_any_order_with_duplicates_gives_the_same_board(
    events: list[tuple[str, BedRecord]], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(events), label="order")
    extra = (
        data.draw(st.lists(st.sampled_from(events), max_size=len(events) * 2), label="duplicates")
        if events
        else []
    )
    arrivals = list(shuffled)
    for dup in extra:
        arrivals.insert(data.draw(st.integers(0, len(arrivals)), label="position"), dup)

    reference = WardBoard(ward=PROPERTY_WARD, system_id=SYSTEM)
    for bed_id, record in sorted(events, key=_sort_key):
        assert reference.apply(bed_id, record) is not Applied.stale

    board = WardBoard(ward=PROPERTY_WARD, system_id=SYSTEM)
    for bed_id, record in arrivals:
        board.apply(bed_id, record)

    assert board.summary().beds == reference.summary().beds
    assert board.summary() == reference.summary()

    # And both agree with the rule itself: each bed shows its latest event by (time, event id).
    expected = dict.fromkeys(BED_IDS, BedStatus.unoccupied)
    for bed_id, record in sorted(events, key=_sort_key):
        expected[bed_id] = record.status
    summary = board.summary()
    assert summary.beds == expected
    assert summary.beds_total == len(BED_IDS)
    assert sum(summary.counts.model_dump().values()) == len(BED_IDS)
    assert (
        summary.available == summary.counts.unoccupied == list(expected.values()).count(BedStatus.unoccupied)
    )
