"""OPEL (Operational Pressures Escalation Levels) scoring from a versioned, validated profile.

A profile (YAML; the format is in docs/opel.md) names the parameters, their thresholds and weights,
and the bands that turn a weighted score percentage into a level 1–4. Parameters, thresholds and
bands change between framework versions and between trusts, so they are configuration, not code.

Scoring is pure: the caller passes the metric values it has computed and gets back a level with a
breakdown that explains it, stamped with the profile id and version that produced it. A declared
(human-approved) level is kept beside the computed one, never written over it; `effective_level`
says which applies at a given moment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

_CODE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

KNOWN_METRICS: frozenset[str] = frozenset(
    {
        "mean_handover_minutes",
        "ed_4h_performance_pct",
        "ed_attendance_variation_pct",
        "ed_majors_resus_occupancy_pct",
        "ed_median_time_to_treatment_minutes",
        "ed_over_12h_pct",
        "ga_occupancy_pct",
        "escalation_beds_pct_of_open",
        "ncr_pct_of_occupied",
        "cc_occupancy_pct",
        "ambulance_queue",
        "ed_dta_waiting",
        "handovers_over_60",
    }
)
"""The per-site metrics the command centre computes; a profile may score only these."""

# Strict so that a quoted "15" or a YAML `yes` in a threshold is an error rather than a guess.
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
PositiveWeight = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
Level = Annotated[int, Field(strict=True, ge=1, le=4)]
Direction = Literal["higher_is_worse", "lower_is_worse"]
SiteWeighting = Literal["beds", "equal", "explicit"]


class Parameter(BaseModel):
    """One scored measure. `thresholds` are where scores 2, 3 and 4 start, in order of worsening."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=_CODE)
    metric: str
    label: str = Field(min_length=1)
    direction: Direction
    thresholds: list[Number] = Field(min_length=3, max_length=3)
    weight: PositiveWeight

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in KNOWN_METRICS:
            raise ValueError(f"unknown metric {metric!r}; known metrics: {', '.join(sorted(KNOWN_METRICS))}")
        return metric

    @field_validator("thresholds")
    @classmethod
    def _thresholds_worsen(cls, thresholds: list[float], info: ValidationInfo) -> list[float]:
        t2, t3, t4 = thresholds
        direction = info.data.get("direction")  # absent when the direction itself was invalid
        if direction == "higher_is_worse" and not t2 < t3 < t4:
            raise ValueError(
                f"{thresholds} must be strictly ascending (where scores 2, 3, 4 start) for higher_is_worse"
            )
        if direction == "lower_is_worse" and not t2 > t3 > t4:
            raise ValueError(
                f"{thresholds} must be strictly descending (where scores 2, 3, 4 start) for lower_is_worse"
            )
        return thresholds

    def score(self, value: float) -> tuple[int, float | None]:
        """The score 1–4 for `value` and the threshold it reached (None at score 1).

        A value exactly on a threshold has reached it: higher_is_worse scores 2 from `value >= t2`,
        lower_is_worse scores 2 from `value <= t2`, and likewise for 3 and 4.
        """
        reached: float | None = None
        score = 1
        for threshold in self.thresholds:
            hit = value >= threshold if self.direction == "higher_is_worse" else value <= threshold
            if not hit:
                break
            score += 1
            reached = threshold
        return score, reached


class Band(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    level: Level
    min_pct: float = Field(strict=True, ge=0, lt=100, allow_inf_nan=False)


class SystemRule(BaseModel):
    """How site score percentages fold into one system percentage."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    site_weighting: SiteWeighting
    weights: dict[str, PositiveWeight] = Field(default_factory=dict, validate_default=True)

    @field_validator("weights")
    @classmethod
    def _weights_fit_the_weighting(cls, weights: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        weighting = info.data.get("site_weighting")
        if weighting == "explicit" and not weights:
            raise ValueError("site_weighting explicit needs a weight for each site (site id: weight > 0)")
        if weighting in ("beds", "equal") and weights:
            raise ValueError(f"weights are only used with site_weighting explicit, not {weighting}")
        return weights


class OpelProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=_CODE)
    version: str = Field(min_length=1)
    framework: str = Field(min_length=1)
    description: str = Field(min_length=1)
    parameters: list[Parameter] = Field(min_length=1)
    bands: list[Band]
    min_parameters_with_data: int = Field(strict=True, ge=1)
    system: SystemRule

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_text(cls, version: Any) -> Any:
        if isinstance(version, int | float) and not isinstance(version, bool):
            raise ValueError(
                f"write the version as quoted text, e.g. '{version}'; YAML reads 2024.10 as the number 2024.1"
            )
        return version

    @field_validator("parameters")
    @classmethod
    def _unique_parameters(cls, parameters: list[Parameter]) -> list[Parameter]:
        ids = [p.id for p in parameters]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"parameter ids used more than once: {', '.join(duplicates)}")
        metrics = [p.metric for p in parameters]
        duplicates = sorted({m for m in metrics if metrics.count(m) > 1})
        if duplicates:
            raise ValueError(f"metrics scored by more than one parameter: {', '.join(duplicates)}")
        return parameters

    @field_validator("bands")
    @classmethod
    def _four_rising_bands(cls, bands: list[Band]) -> list[Band]:
        levels = [b.level for b in bands]
        if levels != [1, 2, 3, 4]:
            raise ValueError(f"need exactly levels 1, 2, 3, 4 in that order, got {levels}")
        if bands[0].min_pct != 0:
            raise ValueError(f"bands.0.min_pct (level 1) must be 0, not {bands[0].min_pct}")
        for i in range(1, len(bands)):
            if bands[i].min_pct <= bands[i - 1].min_pct:
                raise ValueError(
                    f"bands.{i}.min_pct ({bands[i].min_pct}) must be greater than "
                    f"bands.{i - 1}.min_pct ({bands[i - 1].min_pct})"
                )
        return bands

    @field_validator("min_parameters_with_data")
    @classmethod
    def _reachable(cls, minimum: int, info: ValidationInfo) -> int:
        parameters = info.data.get("parameters")
        if parameters is not None and minimum > len(parameters):
            raise ValueError(f"{minimum} is more than the {len(parameters)} parameters in the profile")
        return minimum

    def level_for(self, score_pct: float) -> int:
        """The highest band whose `min_pct` is at or below `score_pct`."""
        level = 1
        for band in self.bands:
            if score_pct >= band.min_pct:
                level = band.level
        return level


class OpelProfileError(ValueError):
    """The OPEL profile file is invalid; the message names the file and the field."""


def load_profile(path: Path) -> OpelProfile:
    try:
        raw: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise OpelProfileError(f"{path}: cannot read OPEL profile: {exc}") from exc
    try:
        return OpelProfile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise OpelProfileError(f"{path}: {problems}") from exc


# --- results ------------------------------------------------------------------------------------------


class ParameterScore(BaseModel):
    """One line of a site's breakdown. Fields about the score are None when the metric had no value."""

    model_config = ConfigDict(frozen=True)
    parameter_id: str
    label: str
    metric: str
    direction: Direction
    value: float | None
    score: int | None
    threshold: float | None = Field(description="the threshold the value reached; None at score 1")
    weight: float
    weighted_points: float | None = Field(description="weight × (score − 1)")
    contribution_pct: float | None = Field(
        description="percentage points of the site's score_pct; None when the level is not computed"
    )


class OpelResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    profile_id: str
    profile_version: str
    level: int | None = Field(description="None: fewer parameters had data than the profile requires")
    score_pct: float | None
    breakdown: list[ParameterScore]
    missing: list[str] = Field(description="ids of the parameters whose metric had no value")
    parameters_with_data: int
    min_parameters_with_data: int


class SiteContribution(BaseModel):
    model_config = ConfigDict(frozen=True)
    site_id: str
    level: int
    score_pct: float
    weight: float
    share: float = Field(description="weight / total weight of the included sites")
    contribution_pct: float = Field(description="share × score_pct: percentage points of the system's")


class SiteExclusion(BaseModel):
    model_config = ConfigDict(frozen=True)
    site_id: str
    reason: Literal["insufficient_data", "no_beds", "no_weight"]


class SystemOpelResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    profile_id: str
    profile_version: str
    site_weighting: SiteWeighting
    level: int | None = Field(description="None: no site had a level")
    score_pct: float | None
    sites: list[SiteContribution]
    excluded: list[SiteExclusion]


# --- scoring ------------------------------------------------------------------------------------------


def _usable(value: float | None) -> float | None:
    # A NaN or infinite value is a metric that could not be computed (e.g. 0/0), not an extreme.
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def score_site(profile: OpelProfile, metrics: Mapping[str, float | None]) -> OpelResult:
    """Score one site. Metrics the profile does not use are ignored; absent ones are `missing`."""
    values = {p.id: _usable(metrics.get(p.metric)) for p in profile.parameters}
    scores: dict[str, tuple[int, float | None]] = {}
    for parameter in profile.parameters:
        value = values[parameter.id]
        if value is not None:
            scores[parameter.id] = parameter.score(value)

    # Exact arithmetic, so the level never depends on summation order or a last-digit rounding.
    maximum = sum((Fraction(p.weight) * 3 for p in profile.parameters if p.id in scores), Fraction(0))
    computed = len(scores) >= profile.min_parameters_with_data
    score_pct: float | None = None
    level: int | None = None
    if computed:
        points = sum(
            (Fraction(p.weight) * (scores[p.id][0] - 1) for p in profile.parameters if p.id in scores),
            Fraction(0),
        )
        score_pct = float(points * 100 / maximum)
        level = profile.level_for(score_pct)

    breakdown: list[ParameterScore] = []
    for parameter in profile.parameters:
        score, threshold = scores.get(parameter.id, (None, None))
        points_here = None if score is None else Fraction(parameter.weight) * (score - 1)
        breakdown.append(
            ParameterScore(
                parameter_id=parameter.id,
                label=parameter.label,
                metric=parameter.metric,
                direction=parameter.direction,
                value=values[parameter.id],
                score=score,
                threshold=threshold,
                weight=parameter.weight,
                weighted_points=None if points_here is None else float(points_here),
                contribution_pct=(
                    float(points_here * 100 / maximum) if computed and points_here is not None else None
                ),
            )
        )
    return OpelResult(
        profile_id=profile.id,
        profile_version=profile.version,
        level=level,
        score_pct=score_pct,
        breakdown=breakdown,
        missing=[p.id for p in profile.parameters if p.id not in scores],
        parameters_with_data=len(scores),
        min_parameters_with_data=profile.min_parameters_with_data,
    )


def _site_weight(
    profile: OpelProfile, site_id: str, site_beds: Mapping[str, int]
) -> Fraction | Literal["no_beds", "no_weight"]:
    weighting = profile.system.site_weighting
    if weighting == "equal":
        return Fraction(1)
    if weighting == "beds":
        beds = site_beds.get(site_id, 0)
        return Fraction(beds) if beds > 0 else "no_beds"
    weight = profile.system.weights.get(site_id)
    return Fraction(weight) if weight is not None else "no_weight"


def score_system(
    profile: OpelProfile, site_results: Mapping[str, OpelResult], site_beds: Mapping[str, int]
) -> SystemOpelResult:
    """Fold site percentages into a system percentage by the profile's site weighting, then band it.

    Sites without a level, and sites with no bed count (beds weighting) or no weight (explicit
    weighting), are left out and listed in `excluded`. `site_beds` is only read for beds weighting.
    """
    included: list[tuple[str, int, float, Fraction]] = []
    excluded: list[SiteExclusion] = []
    for site_id in sorted(site_results):
        result = site_results[site_id]
        if (result.profile_id, result.profile_version) != (profile.id, profile.version):
            raise ValueError(
                f"site {site_id} was scored with profile {result.profile_id} {result.profile_version}, "
                f"not {profile.id} {profile.version}"
            )
        if result.level is None or result.score_pct is None:
            excluded.append(SiteExclusion(site_id=site_id, reason="insufficient_data"))
            continue
        weight = _site_weight(profile, site_id, site_beds)
        if isinstance(weight, str):
            excluded.append(SiteExclusion(site_id=site_id, reason=weight))
            continue
        included.append((site_id, result.level, result.score_pct, weight))

    total = sum((w for *_, w in included), Fraction(0))
    score_pct: float | None = None
    level: int | None = None
    if included:
        score_pct = float(sum((w * Fraction(pct) for _, _, pct, w in included), Fraction(0)) / total)
        level = profile.level_for(score_pct)
    return SystemOpelResult(
        profile_id=profile.id,
        profile_version=profile.version,
        site_weighting=profile.system.site_weighting,
        level=level,
        score_pct=score_pct,
        sites=[
            SiteContribution(
                site_id=site_id,
                level=site_level,
                score_pct=pct,
                weight=float(w),
                share=float(w / total),
                contribution_pct=float(w * Fraction(pct) / total),
            )
            for site_id, site_level, pct, w in included
        ],
        excluded=excluded,
    )


# --- declared levels ----------------------------------------------------------------------------------


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be blank")
    return text


NotBlank = Annotated[str, Field(min_length=1), AfterValidator(_not_blank)]
DeclarationReason = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_not_blank)]
"""Why a level was declared: the one rule for the API that takes it and the model that reads it back."""


class DeclaredLevel(BaseModel):
    """A level a person has declared, which overrides the computed one from `declared_at` until
    `expires_at` (or until withdrawn, when there is no expiry)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    level: Level
    reason: DeclarationReason
    declared_by: NotBlank
    declared_at: AwareDatetime
    expires_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _expires_after_declared(self) -> DeclaredLevel:
        if self.expires_at is not None and self.expires_at <= self.declared_at:
            raise ValueError("expires_at must be after declared_at")
        return self

    def is_active(self, now: datetime) -> bool:
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        return self.declared_at <= now and (self.expires_at is None or now < self.expires_at)


def effective_level(
    computed: OpelResult | SystemOpelResult, declared: DeclaredLevel | None, now: datetime
) -> int | None:
    """The declared level while it is active, otherwise the computed one (which may be None)."""
    if declared is not None and declared.is_active(now):
        return declared.level
    return computed.level
