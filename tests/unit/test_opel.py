"""OPEL scoring: the default profile, profile validation errors that name the field, hand-computed
site and system levels, threshold and band edges, declared levels, and monotonicity."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.opel import (
    KNOWN_METRICS,
    Band,
    DeclaredLevel,
    OpelProfile,
    OpelProfileError,
    OpelResult,
    Parameter,
    SiteExclusion,
    SystemOpelResult,
    SystemRule,
    effective_level,
    load_profile,
    score_site,
    score_system,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROFILE = ROOT / "deploy/opel/default-profile.yaml"
DOCS = ROOT / "docs/opel.md"


@pytest.fixture(scope="module")
def default_profile() -> OpelProfile:
    return load_profile(DEFAULT_PROFILE)


# --- a small profile whose arithmetic is easy to do by hand -----------------------------------------
# Weights 2 + 1 + 2 + 1 = 6, so with every parameter present the maximum is 6 x 3 = 18 points.

BASE: dict[str, Any] = {
    "id": "test-profile",
    "version": "1.0",
    "framework": "test framework",
    "description": "four parameters with round numbers",
    "parameters": [
        {
            "id": "handover",
            "metric": "mean_handover_minutes",
            "label": "Mean handover (min)",
            "direction": "higher_is_worse",
            "thresholds": [15, 30, 60],
            "weight": 2,
        },
        {
            "id": "four_hour",
            "metric": "ed_4h_performance_pct",
            "label": "4-hour performance (%)",
            "direction": "lower_is_worse",
            "thresholds": [78, 70, 60],
            "weight": 1,
        },
        {
            "id": "ga_occupancy",
            "metric": "ga_occupancy_pct",
            "label": "G&A occupancy (%)",
            "direction": "higher_is_worse",
            "thresholds": [85, 92, 97],
            "weight": 2,
        },
        {
            "id": "ncr",
            "metric": "ncr_pct_of_occupied",
            "label": "NCR (% of occupied)",
            "direction": "higher_is_worse",
            "thresholds": [10, 15, 20],
            "weight": 1,
        },
    ],
    "bands": [
        {"level": 1, "min_pct": 0},
        {"level": 2, "min_pct": 25},
        {"level": 3, "min_pct": 50},
        {"level": 4, "min_pct": 75},
    ],
    "min_parameters_with_data": 3,
    "system": {"site_weighting": "beds"},
}


def _profile(doc: dict[str, Any] | None = None) -> OpelProfile:
    return OpelProfile.model_validate(doc if doc is not None else BASE)


def _with(**changes: Any) -> OpelProfile:
    doc = copy.deepcopy(BASE)
    doc.update(changes)
    return _profile(doc)


# Site A: handover 42 -> 3 (>= 30), 4h 74 -> 2 (<= 78), G&A 93.5 -> 3 (>= 92), NCR 12 -> 2 (>= 10).
# Points 2x2 + 1x1 + 2x2 + 1x1 = 10 of 18 = 55.56% -> OPEL 3.
SITE_A = {
    "mean_handover_minutes": 42.0,
    "ed_4h_performance_pct": 74.0,
    "ga_occupancy_pct": 93.5,
    "ncr_pct_of_occupied": 12.0,
}
# Site B: handover 12 -> 1, 4h 81 -> 1, G&A 88 -> 2, NCR missing.
# Points 0 + 0 + 2x1 = 2 of 3 x (2 + 1 + 2) = 15 -> 13.33% -> OPEL 1.
SITE_B = {
    "mean_handover_minutes": 12.0,
    "ed_4h_performance_pct": 81.0,
    "ga_occupancy_pct": 88.0,
    "ncr_pct_of_occupied": None,
}
# Site C: handover 75 -> 4, 4h 58 -> 4, G&A 98 -> 4, NCR 16 -> 3.
# Points 2x3 + 1x3 + 2x3 + 1x2 = 17 of 18 = 94.44% -> OPEL 4.
SITE_C = {
    "mean_handover_minutes": 75.0,
    "ed_4h_performance_pct": 58.0,
    "ga_occupancy_pct": 98.0,
    "ncr_pct_of_occupied": 16.0,
}
# Site D: two values where three are required -> insufficient data.
SITE_D = {"mean_handover_minutes": 75.0, "ga_occupancy_pct": 98.0}


def _line(result: OpelResult, parameter_id: str) -> Any:
    (line,) = [p for p in result.breakdown if p.parameter_id == parameter_id]
    return line


# --- the default profile ------------------------------------------------------------------------------


def test_default_profile_loads_with_the_nine_acute_parameters(default_profile: OpelProfile) -> None:
    assert default_profile.id == "icc-default-acute"
    assert default_profile.version == "2024.1"
    assert {p.metric for p in default_profile.parameters} == {
        "mean_handover_minutes",
        "ed_4h_performance_pct",
        "ed_attendance_variation_pct",
        "ed_majors_resus_occupancy_pct",
        "ed_median_time_to_treatment_minutes",
        "ed_over_12h_pct",
        "ga_occupancy_pct",
        "escalation_beds_pct_of_open",
        "ncr_pct_of_occupied",
    }
    assert [b.min_pct for b in default_profile.bands] == [0, 25, 50, 75]
    assert default_profile.min_parameters_with_data == 6
    assert default_profile.system.site_weighting == "beds"
    assert sum(p.weight for p in default_profile.parameters) == 10


def test_default_profile_anchor_thresholds(default_profile: OpelProfile) -> None:
    by_id = {p.id: p for p in default_profile.parameters}
    assert (by_id["handover"].direction, by_id["handover"].thresholds) == ("higher_is_worse", [15, 30, 60])
    assert (by_id["four_hour"].direction, by_id["four_hour"].thresholds) == ("lower_is_worse", [78, 70, 60])
    assert by_id["ga_occupancy"].thresholds == [85, 92, 97]


def test_default_profile_says_its_thresholds_are_illustrative(default_profile: OpelProfile) -> None:
    assert "illustrative" in default_profile.framework
    assert "2023/24" in default_profile.framework
    text = DEFAULT_PROFILE.read_text(encoding="utf-8")
    assert "must set its own agreed values" in text


def test_known_metrics() -> None:
    assert isinstance(KNOWN_METRICS, frozenset)
    assert len(KNOWN_METRICS) == 13
    assert {"cc_occupancy_pct", "ambulance_queue", "ed_dta_waiting", "handovers_over_60"} <= KNOWN_METRICS


def test_all_parameters_at_score_two_or_three_land_on_opel_two_and_three(
    default_profile: OpelProfile,
) -> None:
    at = {s: {p.metric: p.thresholds[s - 2] for p in default_profile.parameters} for s in (2, 3, 4)}
    assert [score_site(default_profile, at[s]).level for s in (2, 3, 4)] == [2, 3, 4]


# --- the worked example in docs/opel.md ---------------------------------------------------------------

DOC_RXN01 = {
    "mean_handover_minutes": 42,
    "ed_4h_performance_pct": 71.5,
    "ed_attendance_variation_pct": 12,
    "ed_majors_resus_occupancy_pct": 104,
    "ed_median_time_to_treatment_minutes": 95,
    "ed_over_12h_pct": 6.5,
    "ga_occupancy_pct": 95.2,
    "escalation_beds_pct_of_open": 3.1,
    "ncr_pct_of_occupied": 17,
}
DOC_RXN02: dict[str, float | None] = {
    "mean_handover_minutes": 18,
    "ed_4h_performance_pct": 81,
    "ed_attendance_variation_pct": None,
    "ed_majors_resus_occupancy_pct": 88,
    "ed_over_12h_pct": 1.2,
    "ga_occupancy_pct": 90.5,
    "escalation_beds_pct_of_open": 0,
    "ncr_pct_of_occupied": 12,
}
DOC_RXN03 = {"mean_handover_minutes": 25, "ga_occupancy_pct": 91, "ncr_pct_of_occupied": 14}


def test_docs_worked_example_sites(default_profile: OpelProfile) -> None:
    rxn01 = score_site(default_profile, DOC_RXN01)
    assert [p.score for p in rxn01.breakdown] == [3, 2, 3, 3, 2, 3, 3, 2, 3]
    assert [p.weighted_points for p in rxn01.breakdown] == [3, 1, 1, 2, 1, 3, 3, 1, 2]
    assert rxn01.score_pct == pytest.approx(17 / 30 * 100)  # 56.67
    assert rxn01.level == 3

    rxn02 = score_site(default_profile, DOC_RXN02)
    assert rxn02.missing == ["attendance_variation", "time_to_treatment"]
    assert [p.score for p in rxn02.breakdown] == [2, 1, None, 2, None, 1, 2, 1, 2]
    assert rxn02.score_pct == pytest.approx(5 / 25.5 * 100)  # 19.61
    assert rxn02.level == 1

    rxn03 = score_site(default_profile, DOC_RXN03)
    assert (rxn03.level, rxn03.score_pct, rxn03.parameters_with_data) == (None, None, 3)


def test_docs_worked_example_system(default_profile: OpelProfile) -> None:
    sites = {
        "RXN01": score_site(default_profile, DOC_RXN01),
        "RXN02": score_site(default_profile, DOC_RXN02),
        "RXN03": score_site(default_profile, DOC_RXN03),
    }
    system = score_system(default_profile, sites, {"RXN01": 400, "RXN02": 200, "RXN03": 150})
    assert system.score_pct == pytest.approx(2260 / 51)  # 44.31
    assert system.level == 2
    assert [(s.site_id, s.share) for s in system.sites] == [
        ("RXN01", pytest.approx(2 / 3)),
        ("RXN02", pytest.approx(1 / 3)),
    ]
    assert [s.contribution_pct for s in system.sites] == [pytest.approx(340 / 9), pytest.approx(1000 / 153)]
    assert system.excluded == [SiteExclusion(site_id="RXN03", reason="insufficient_data")]

    equal = default_profile.model_copy(update={"system": SystemRule(site_weighting="equal")})
    assert score_system(equal, sites, {}).score_pct == pytest.approx(3890 / 102)  # 38.14
    explicit = default_profile.model_copy(
        update={"system": SystemRule(site_weighting="explicit", weights={"RXN01": 1, "RXN02": 3})}
    )
    assert score_system(explicit, sites, {}).score_pct == pytest.approx(5890 / 204)  # 28.87


def test_docs_profile_example_is_valid_and_docs_name_every_field() -> None:
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, "docs/opel.md has no yaml example"
    example = OpelProfile.model_validate(yaml.safe_load(blocks[0]))
    assert example.system.site_weighting == "explicit"
    for model in (OpelProfile, Parameter, Band, SystemRule, DeclaredLevel):
        for field in model.model_fields:
            assert f"`{field}`" in text, f"docs/opel.md does not describe {model.__name__}.{field}"
    for metric in KNOWN_METRICS:
        assert f"`{metric}`" in text, metric


# --- site scoring, by hand ----------------------------------------------------------------------------


def test_site_at_opel_3_explains_itself() -> None:
    result = score_site(_profile(), SITE_A)
    assert result.level == 3
    assert result.score_pct == pytest.approx(1000 / 18)  # 10 of 18 points
    assert result.missing == []
    assert (result.profile_id, result.profile_version) == ("test-profile", "1.0")
    handover = _line(result, "handover")
    assert (handover.value, handover.score, handover.threshold) == (42.0, 3, 30)
    assert (handover.weight, handover.weighted_points) == (2, 4)
    assert handover.contribution_pct == pytest.approx(400 / 18)
    four_hour = _line(result, "four_hour")  # lower_is_worse: 74 is at or below 78, above 70
    assert (four_hour.score, four_hour.threshold, four_hour.weighted_points) == (2, 78, 1)
    assert [p.score for p in result.breakdown] == [3, 2, 3, 2]
    assert sum(p.contribution_pct or 0 for p in result.breakdown) == pytest.approx(result.score_pct)


def test_site_at_opel_1_with_a_missing_value() -> None:
    result = score_site(_profile(), SITE_B)
    assert result.level == 1
    assert result.score_pct == pytest.approx(200 / 15)  # 2 of 15 points: the missing NCR is left out
    assert result.missing == ["ncr"]
    assert result.parameters_with_data == 3
    ncr = _line(result, "ncr")
    assert (ncr.value, ncr.score, ncr.threshold, ncr.weighted_points, ncr.contribution_pct) == (
        None,
        None,
        None,
        None,
        None,
    )
    four_hour = _line(result, "four_hour")  # lower_is_worse: 81 is above 78
    assert (four_hour.score, four_hour.threshold, four_hour.weighted_points) == (1, None, 0)


def test_site_at_opel_4() -> None:
    result = score_site(_profile(), SITE_C)
    assert [p.score for p in result.breakdown] == [4, 4, 4, 3]
    assert [p.threshold for p in result.breakdown] == [60, 60, 97, 15]
    assert result.score_pct == pytest.approx(1700 / 18)
    assert result.level == 4


def test_insufficient_data_gives_no_level_and_says_what_is_missing() -> None:
    result = score_site(_profile(), SITE_D)
    assert result.level is None
    assert result.score_pct is None
    assert result.missing == ["four_hour", "ncr"]
    assert (result.parameters_with_data, result.min_parameters_with_data) == (2, 3)
    # the parameters that do have values are still scored, so the breakdown is still useful
    assert [p.score for p in result.breakdown] == [4, None, 4, None]
    assert all(p.contribution_pct is None for p in result.breakdown)


def test_non_finite_values_count_as_missing() -> None:
    metrics = {**SITE_A, "ncr_pct_of_occupied": float("nan"), "ga_occupancy_pct": float("inf")}
    result = score_site(_profile(), metrics)
    assert result.missing == ["ga_occupancy", "ncr"]
    assert result.level is None


def test_metrics_outside_the_profile_are_ignored() -> None:
    with_extra = score_site(_profile(), {**SITE_A, "ambulance_queue": 40.0, "something_else": 1.0})
    assert with_extra == score_site(_profile(), SITE_A)


def test_results_are_json_round_trippable() -> None:
    site = score_site(_profile(), SITE_A)
    assert OpelResult.model_validate_json(site.model_dump_json()) == site
    system = score_system(_profile(), {"A": site}, {"A": 10})
    assert SystemOpelResult.model_validate_json(system.model_dump_json()) == system


# --- threshold and band edges -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "score", "threshold"),
    [
        (14.999, 1, None),
        (15, 2, 15),
        (29.999, 2, 15),
        (30, 3, 30),
        (59.999, 3, 30),
        (60, 4, 60),
        (600, 4, 60),
    ],
)
def test_higher_is_worse_edges(value: float, score: int, threshold: float | None) -> None:
    result = score_site(_profile(), {**SITE_A, "mean_handover_minutes": value})
    assert (_line(result, "handover").score, _line(result, "handover").threshold) == (score, threshold)


@pytest.mark.parametrize(
    ("value", "score", "threshold"),
    [
        (100, 1, None),
        (78.001, 1, None),
        (78, 2, 78),
        (70.001, 2, 78),
        (70, 3, 70),
        (60.001, 3, 70),
        (60, 4, 60),
    ],
)
def test_lower_is_worse_edges(value: float, score: int, threshold: float | None) -> None:
    result = score_site(_profile(), {**SITE_A, "ed_4h_performance_pct": value})
    assert (_line(result, "four_hour").score, _line(result, "four_hour").threshold) == (score, threshold)


# Equal weights of 1: the maximum is 12 points, so 3, 6 and 9 points land exactly on 25, 50 and 75%.
EQUAL = copy.deepcopy(BASE)
for _p in EQUAL["parameters"]:
    _p["weight"] = 1


def _at_scores(handover: int, four_hour: int, ga: int, ncr: int) -> dict[str, float]:
    def value(thresholds: list[float], score: int, lower_is_worse: bool = False) -> float:
        if score > 1:
            return thresholds[score - 2]  # exactly on the threshold
        return thresholds[0] + 1 if lower_is_worse else thresholds[0] - 1

    return {
        "mean_handover_minutes": value([15, 30, 60], handover),
        "ed_4h_performance_pct": value([78, 70, 60], four_hour, lower_is_worse=True),
        "ga_occupancy_pct": value([85, 92, 97], ga),
        "ncr_pct_of_occupied": value([10, 15, 20], ncr),
    }


@pytest.mark.parametrize(
    ("scores", "pct", "level"),
    [
        ((1, 1, 1, 1), 0.0, 1),
        ((2, 2, 1, 1), 100 * 2 / 12, 1),
        ((2, 2, 2, 1), 25.0, 2),
        ((3, 2, 2, 2), 100 * 5 / 12, 2),
        ((3, 3, 2, 2), 50.0, 3),
        ((4, 3, 3, 2), 100 * 8 / 12, 3),
        ((4, 3, 3, 3), 75.0, 4),
        ((4, 4, 4, 4), 100.0, 4),
    ],
)
def test_band_edges_end_to_end(scores: tuple[int, int, int, int], pct: float, level: int) -> None:
    result = score_site(_profile(EQUAL), _at_scores(*scores))
    assert [p.score for p in result.breakdown] == list(scores)
    assert result.score_pct == pct
    assert result.level == level


@pytest.mark.parametrize(
    ("pct", "level"),
    [(0, 1), (24.999999, 1), (25, 2), (49.999999, 2), (50, 3), (74.999999, 3), (75, 4), (100, 4)],
)
def test_level_for_band_edges(pct: float, level: int) -> None:
    assert _profile().level_for(pct) == level


def test_a_band_edge_that_is_not_a_round_number() -> None:
    # One parameter scoring 2 is a third of the maximum; a band written as that float is reached.
    doc = copy.deepcopy(BASE)
    doc["parameters"] = doc["parameters"][:1]
    doc["min_parameters_with_data"] = 1
    doc["bands"][1]["min_pct"] = 100 / 3
    result = score_site(_profile(doc), {"mean_handover_minutes": 15})
    assert result.score_pct == 100 / 3
    assert result.level == 2
    assert score_site(_profile(doc), {"mean_handover_minutes": 14.9}).level == 1


# --- system scoring -----------------------------------------------------------------------------------


@pytest.fixture
def site_results() -> dict[str, OpelResult]:
    profile = _profile()
    return {
        "A": score_site(profile, SITE_A),
        "B": score_site(profile, SITE_B),
        "D": score_site(profile, SITE_D),
    }


def test_system_weighted_by_beds(site_results: dict[str, OpelResult]) -> None:
    # (600 x 500/9 + 300 x 40/3) / 900 = 1120/27 = 41.48% -> OPEL 2; D has no level and is left out.
    system = score_system(_profile(), site_results, {"A": 600, "B": 300, "D": 900})
    assert system.site_weighting == "beds"
    assert system.score_pct == pytest.approx(1120 / 27)
    assert system.level == 2
    assert [s.model_dump() for s in system.sites] == [
        {
            "site_id": "A",
            "level": 3,
            "score_pct": pytest.approx(500 / 9),
            "weight": 600,
            "share": pytest.approx(2 / 3),
            "contribution_pct": pytest.approx(1000 / 27),
        },
        {
            "site_id": "B",
            "level": 1,
            "score_pct": pytest.approx(40 / 3),
            "weight": 300,
            "share": pytest.approx(1 / 3),
            "contribution_pct": pytest.approx(40 / 9),
        },
    ]
    assert system.excluded == [SiteExclusion(site_id="D", reason="insufficient_data")]
    assert (system.profile_id, system.profile_version) == ("test-profile", "1.0")


def test_system_with_explicit_weights(site_results: dict[str, OpelResult]) -> None:
    # (1 x 500/9 + 3 x 40/3) / 4 = 215/9 = 23.89% -> OPEL 1, where bed weighting gave OPEL 2.
    profile = _with(system={"site_weighting": "explicit", "weights": {"A": 1, "B": 3, "D": 1}})
    results = {k: v.model_copy(update={"profile_id": profile.id}) for k, v in site_results.items()}
    system = score_system(profile, results, {})
    assert system.score_pct == pytest.approx(215 / 9)
    assert system.level == 1
    assert [(s.site_id, s.weight, s.share) for s in system.sites] == [
        ("A", 1, pytest.approx(0.25)),
        ("B", 3, pytest.approx(0.75)),
    ]


def test_system_with_equal_weights(site_results: dict[str, OpelResult]) -> None:
    # (500/9 + 40/3) / 2 = 310/9 = 34.44% -> OPEL 2; bed counts are not read.
    system = score_system(_with(system={"site_weighting": "equal"}), site_results, {})
    assert system.score_pct == pytest.approx(310 / 9)
    assert system.level == 2
    assert [s.weight for s in system.sites] == [1, 1]


def test_system_excludes_sites_without_a_weight(site_results: dict[str, OpelResult]) -> None:
    by_beds = score_system(_profile(), site_results, {"A": 600, "B": 0})
    assert [s.site_id for s in by_beds.sites] == ["A"]
    assert by_beds.score_pct == pytest.approx(500 / 9)
    assert by_beds.excluded == [
        SiteExclusion(site_id="B", reason="no_beds"),
        SiteExclusion(site_id="D", reason="insufficient_data"),
    ]
    explicit = score_system(
        _with(system={"site_weighting": "explicit", "weights": {"B": 2}}), site_results, {"A": 600}
    )
    assert [s.site_id for s in explicit.sites] == ["B"]
    assert SiteExclusion(site_id="A", reason="no_weight") in explicit.excluded


def test_system_with_no_scorable_site_has_no_level() -> None:
    system = score_system(_profile(), {"D": score_site(_profile(), SITE_D)}, {"D": 100})
    assert (system.level, system.score_pct, system.sites) == (None, None, [])
    assert score_system(_profile(), {}, {}).level is None


def test_system_refuses_results_from_another_profile_version(site_results: dict[str, OpelResult]) -> None:
    newer = _with(version="1.1")
    with pytest.raises(
        ValueError, match=re.escape("site A was scored with profile test-profile 1.0, not test-profile 1.1")
    ):
        score_system(newer, site_results, {"A": 1, "B": 1})


# --- declared levels ----------------------------------------------------------------------------------

T0 = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)


def _declared(**changes: Any) -> DeclaredLevel:
    fields: dict[str, Any] = {
        "level": 4,
        "reason": "Two ambulances queued over 60 minutes; ICU full; internal critical incident.",
        "declared_by": "site-duty-manager",
        "declared_at": T0,
        "expires_at": T0 + timedelta(hours=4),
        **changes,
    }
    return DeclaredLevel.model_validate(fields)


def test_declared_level_wins_until_it_expires() -> None:
    computed = score_site(_profile(), SITE_A)  # OPEL 3
    declared = _declared()
    assert effective_level(computed, declared, T0 - timedelta(seconds=1)) == 3  # not yet declared
    assert effective_level(computed, declared, T0) == 4
    assert effective_level(computed, declared, T0 + timedelta(hours=3, minutes=59)) == 4
    assert effective_level(computed, declared, T0 + timedelta(hours=4)) == 3  # expired exactly now
    assert effective_level(computed, declared, T0 + timedelta(days=1)) == 3
    assert computed.level == 3  # the computed result is untouched


def test_declared_level_without_expiry_and_no_declaration() -> None:
    computed = score_site(_profile(), SITE_B)  # OPEL 1
    assert effective_level(computed, _declared(level=2, expires_at=None), T0 + timedelta(days=30)) == 2
    assert effective_level(computed, None, T0) == 1
    insufficient = score_site(_profile(), SITE_D)
    assert effective_level(insufficient, None, T0) is None
    assert effective_level(insufficient, _declared(), T0) == 4


def test_declared_level_applies_to_a_system_result(site_results: dict[str, OpelResult]) -> None:
    system = score_system(_profile(), site_results, {"A": 600, "B": 300})
    assert effective_level(system, _declared(level=3), T0 + timedelta(hours=1)) == 3
    assert effective_level(system, _declared(level=3), T0 + timedelta(hours=5)) == 2


def test_declared_level_in_another_timezone_compares_by_instant() -> None:
    london_summer = _declared(declared_at=datetime(2025, 7, 1, 9, 0, tzinfo=UTC), expires_at=None)
    bst = datetime(2025, 7, 1, 9, 30, tzinfo=UTC).astimezone(ZoneInfo("Europe/London"))  # 10:30 BST
    assert london_summer.is_active(bst)


def test_effective_level_needs_an_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        effective_level(score_site(_profile(), SITE_A), _declared(), datetime(2025, 1, 6, 9, 0))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"level": 5}, "level"),
        ({"level": 0}, "level"),
        ({"reason": ""}, "reason"),
        ({"reason": "   "}, "reason"),
        ({"reason": "x" * 501}, "reason"),
        ({"declared_by": ""}, "declared_by"),
        ({"declared_at": datetime(2025, 1, 6, 8, 0)}, "declared_at"),
        ({"expires_at": datetime(2025, 1, 6, 12, 0)}, "expires_at"),
        ({"expires_at": T0}, "expires_at"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_declarations(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        _declared(**changes)
    message = str(err.value)
    assert field in message


def test_a_500_character_reason_is_allowed() -> None:
    assert len(_declared(reason="x" * 500).reason) == 500


# --- invalid profile files ----------------------------------------------------------------------------


def _write(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def _load_error(path: Path) -> str:
    with pytest.raises(OpelProfileError) as err:
        load_profile(path)
    message = str(err.value)
    assert str(path) in message
    return message


def test_base_document_is_valid(tmp_path: Path) -> None:
    profile = load_profile(_write(tmp_path, BASE))
    assert [p.id for p in profile.parameters] == ["handover", "four_hour", "ga_occupancy", "ncr"]


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        del target[last]

    return mutate


def _duplicate_parameter_id(doc: dict[str, Any]) -> None:
    doc["parameters"][2]["id"] = "handover"


def _duplicate_metric(doc: dict[str, Any]) -> None:
    doc["parameters"][3]["metric"] = "ga_occupancy_pct"


INVALID: list[tuple[str, Mutation, list[str]]] = [
    (
        "unknown metric",
        _set("parameters.1.metric", "bed_pressure"),
        ["parameters.1.metric", "unknown metric 'bed_pressure'", "ga_occupancy_pct"],
    ),
    ("duplicate parameter id", _duplicate_parameter_id, ["parameters:", "used more than once: handover"]),
    ("duplicate metric", _duplicate_metric, ["parameters:", "more than one parameter: ga_occupancy_pct"]),
    (
        "higher_is_worse not ascending",
        _set("parameters.0.thresholds", [15, 60, 30]),
        ["parameters.0.thresholds", "strictly ascending"],
    ),
    (
        "higher_is_worse with equal thresholds",
        _set("parameters.2.thresholds", [85, 85, 97]),
        ["parameters.2.thresholds", "strictly ascending"],
    ),
    (
        "lower_is_worse ascending",
        _set("parameters.1.thresholds", [60, 70, 78]),
        ["parameters.1.thresholds", "strictly descending"],
    ),
    ("two thresholds", _set("parameters.0.thresholds", [15, 30]), ["parameters.0.thresholds", "at least 3"]),
    (
        "four thresholds",
        _set("parameters.0.thresholds", [15, 30, 60, 90]),
        ["parameters.0.thresholds", "at most 3"],
    ),
    (
        "quoted threshold",
        _set("parameters.0.thresholds", ["15", 30, 60]),
        ["parameters.0.thresholds.0", "valid number"],
    ),
    ("zero weight", _set("parameters.2.weight", 0), ["parameters.2.weight", "greater than 0"]),
    ("negative weight", _set("parameters.3.weight", -1), ["parameters.3.weight", "greater than 0"]),
    (
        "unknown direction",
        _set("parameters.0.direction", "up"),
        ["parameters.0.direction", "higher_is_worse"],
    ),
    ("unknown parameter field", _set("parameters.0.colour", "red"), ["parameters.0.colour", "not permitted"]),
    ("missing label", _delete("parameters.3.label"), ["parameters.3.label", "required"]),
    ("bad parameter id", _set("parameters.0.id", "hand over"), ["parameters.0.id", "pattern"]),
    ("no parameters", _set("parameters", []), ["parameters", "at least 1"]),
    ("three bands", _set("bands", BASE["bands"][:3]), ["bands:", "levels 1, 2, 3, 4"]),
    (
        "bands out of order",
        _set("bands", [BASE["bands"][i] for i in (0, 2, 1, 3)]),
        ["bands:", "levels 1, 2, 3, 4"],
    ),
    ("band level 5", _set("bands.3.level", 5), ["bands.3.level", "less than or equal to 4"]),
    ("level 1 not at 0", _set("bands.0.min_pct", 5), ["bands:", "bands.0.min_pct", "must be 0"]),
    (
        "bands not rising",
        _set("bands.2.min_pct", 20),
        ["bands:", "bands.2.min_pct (20.0)", "bands.1.min_pct"],
    ),
    ("bands equal", _set("bands.3.min_pct", 50), ["bands:", "bands.3.min_pct (50.0)"]),
    ("band at 100", _set("bands.3.min_pct", 100), ["bands.3.min_pct", "less than 100"]),
    ("negative band", _set("bands.1.min_pct", -5), ["bands.1.min_pct", "greater than or equal to 0"]),
    (
        "minimum of zero",
        _set("min_parameters_with_data", 0),
        ["min_parameters_with_data", "greater than or equal to 1"],
    ),
    (
        "minimum above the parameter count",
        _set("min_parameters_with_data", 5),
        ["min_parameters_with_data", "more than the 4 parameters"],
    ),
    (
        "explicit without weights",
        _set("system", {"site_weighting": "explicit"}),
        ["system.weights", "needs a weight for each site"],
    ),
    (
        "explicit weight of zero",
        _set("system", {"site_weighting": "explicit", "weights": {"S1": 1, "S2": 0}}),
        ["system.weights.S2", "greater than 0"],
    ),
    (
        "weights with bed weighting",
        _set("system.weights", {"S1": 1}),
        ["system.weights", "only used with site_weighting explicit, not beds"],
    ),
    (
        "unknown site weighting",
        _set("system.site_weighting", "population"),
        ["system.site_weighting", "beds"],
    ),
    ("missing system", _delete("system"), ["system", "required"]),
    ("unquoted version", _set("version", 2024.1), ["version", "quoted text", "'2024.1'"]),
    ("empty description", _set("description", ""), ["description", "at least 1"]),
    ("unknown top-level field", _set("owner", "ICB"), ["owner", "not permitted"]),
]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_profile_names_the_field(tmp_path: Path, mutate: Mutation, expected: list[str]) -> None:
    doc = copy.deepcopy(BASE)
    mutate(doc)
    message = _load_error(_write(tmp_path, doc))
    for fragment in expected:
        assert fragment in message


def test_missing_file(tmp_path: Path) -> None:
    assert "cannot read OPEL profile" in _load_error(tmp_path / "absent.yaml")


def test_broken_yaml(tmp_path: Path) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text("id: [unclosed\n", encoding="utf-8")
    assert "cannot read OPEL profile" in _load_error(path)


def test_not_a_mapping(tmp_path: Path) -> None:
    assert "<root>" in _load_error(_write(tmp_path, ["a", "list"]))


# --- properties ---------------------------------------------------------------------------------------

_DEFAULT = load_profile(DEFAULT_PROFILE)
_METRICS = [p.metric for p in _DEFAULT.parameters]
_values = st.one_of(st.none(), st.floats(min_value=0, max_value=250, allow_nan=False))


@given(
    metrics=st.fixed_dictionaries({m: _values for m in _METRICS}),
    which=st.sampled_from([p for p in _DEFAULT.parameters]),
    change=st.floats(min_value=0, max_value=250, allow_nan=False),
)
def test_a_worse_metric_never_lowers_the_level(
    metrics: dict[str, float | None], which: Parameter, change: float
) -> None:
    before = score_site(_DEFAULT, metrics)
    value = metrics[which.metric]
    worse = dict(metrics)
    if value is not None:
        worse[which.metric] = value + change if which.direction == "higher_is_worse" else value - change
    after = score_site(_DEFAULT, worse)
    if before.level is None:
        assert after.level is None
        return
    assert after.level is not None and after.score_pct is not None and before.score_pct is not None
    assert after.level >= before.level
    assert after.score_pct >= before.score_pct
    score_before = _line(before, which.id).score
    score_after = _line(after, which.id).score
    assert (score_before is None) == (score_after is None)
    if score_before is not None and score_after is not None:
        assert score_after >= score_before


@given(
    pcts=st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), min_size=1, max_size=5),
    beds=st.lists(st.integers(min_value=1, max_value=1000), min_size=5, max_size=5),
)
def test_system_percentage_lies_between_its_sites(pcts: list[float], beds: list[int]) -> None:
    results = {
        f"S{i}": OpelResult(
            profile_id=_DEFAULT.id,
            profile_version=_DEFAULT.version,
            level=_DEFAULT.level_for(pct),
            score_pct=pct,
            breakdown=[],
            missing=[],
            parameters_with_data=9,
            min_parameters_with_data=6,
        )
        for i, pct in enumerate(pcts)
    }
    system = score_system(_DEFAULT, results, {f"S{i}": b for i, b in enumerate(beds)})
    assert system.score_pct is not None and system.level is not None
    assert min(pcts) <= system.score_pct <= max(pcts)
    assert (
        min(r.level or 0 for r in results.values())
        <= system.level
        <= max(r.level or 0 for r in results.values())
    )
    assert sum(s.share for s in system.sites) == pytest.approx(1)
