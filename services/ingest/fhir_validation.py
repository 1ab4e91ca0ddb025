"""FHIR R4 Encounter and Bundle validation with `fhir.resources`, and the facts ICC reads from them.

`fhir.resources` 8 ships FHIR R5 at its top level and R4B (4.3.0) and STU3 as sub-packages; there is
no R4 (4.0.1) package. R4B is used: R4B changed no element of Encounter or Bundle that ICC reads
(Encounter kept R4's statuses and its single `class` Coding, which R5 replaced), so an R4 Encounter
validates as R4B unchanged.

`fhir.resources` validates element by element in Python (about 9,000 Encounters/s on one core), too
slow for a 2,000-entry Bundle at the ingest target. So each resource is first tried against a
**fast model**: plain pydantic models of the subset of Encounter and Bundle that PAS feeds use,
built from the same `fhir_core` primitive types (same regexes, same conversions) and forbidding
every element they do not list. What the fast model accepts, `fhir.resources` accepts too, with the
same values (a property test checks both); anything else — another element, an extension, an
error — goes to `fhir.resources`, whose answer is the one given. Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from fhir.resources.R4B.bundle import Bundle as FhirBundle
from fhir.resources.R4B.encounter import Encounter as FhirEncounter
from fhir_core.types import CanonicalType, CodeType, DateTimeType, IdType, InstantType, StringType, UriType
from pydantic import BaseModel, ConfigDict, Field, ValidationError

FHIR_VERSION = "4.3.0 (R4B models for R4 Encounter)"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
# Encounter.status in R4 (required binding)
R4_STATUSES = (
    "planned",
    "arrived",
    "triaged",
    "in-progress",
    "onleave",
    "finished",
    "cancelled",
    "entered-in-error",
    "unknown",
)


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome issue: what is wrong, and where (a FHIRPath expression)."""

    code: str
    diagnostics: str
    expression: str | None = None
    severity: Literal["fatal", "error", "warning", "information"] = "error"

    def as_fhir(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = [self.expression]
        return issue


class FhirInvalid(Exception):
    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("; ".join(i.diagnostics for i in issues))
        self.issues = issues


# ---- the fast model: a strict subset of R4 Encounter and Bundle -------------------------------------


class _Fast(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Coding(_Fast):
    system: UriType | None = None
    version: StringType | None = None
    code: CodeType | None = None
    display: StringType | None = None


class _CodeableConcept(_Fast):
    coding: list[_Coding] | None = None
    text: StringType | None = None


class _Identifier(_Fast):
    use: CodeType | None = None
    system: UriType | None = None
    value: StringType | None = None


class _Reference(_Fast):
    reference: StringType | None = None
    type: UriType | None = None
    identifier: _Identifier | None = None
    display: StringType | None = None


class _Period(_Fast):
    start: DateTimeType | None = None
    end: DateTimeType | None = None


class _Meta(_Fast):
    versionId: IdType | None = None
    lastUpdated: InstantType | None = None
    source: UriType | None = None
    profile: list[CanonicalType] | None = None


class _EncounterLocation(_Fast):
    location: _Reference
    status: CodeType | None = None
    period: _Period | None = None
    physicalType: _CodeableConcept | None = None


class _Hospitalization(_Fast):
    admitSource: _CodeableConcept | None = None
    dischargeDisposition: _CodeableConcept | None = None


class FastEncounter(_Fast):
    resourceType: Literal["Encounter"]
    id: IdType | None = None
    meta: _Meta | None = None
    identifier: list[_Identifier] | None = None
    status: CodeType
    class_fhir: _Coding = Field(alias="class")
    type: list[_CodeableConcept] | None = None
    serviceType: _CodeableConcept | None = None
    priority: _CodeableConcept | None = None
    subject: _Reference | None = None
    period: _Period | None = None
    hospitalization: _Hospitalization | None = None
    location: list[_EncounterLocation] | None = None
    serviceProvider: _Reference | None = None


class _BundleRequest(_Fast):
    method: CodeType
    url: UriType


class _BundleEntry(_Fast):
    fullUrl: UriType | None = None
    # the resource is validated on its own (fast Encounter or fhir.resources), entry by entry
    resource: dict[str, Any] | None = None
    request: _BundleRequest | None = None


class _FastEntry(_Fast):
    fullUrl: UriType | None = None
    resource: FastEncounter
    request: _BundleRequest | None = None


class FastBundle(_Fast):
    """A whole Bundle of Encounters in one validation from the raw bytes (the usual, quick case)."""

    resourceType: Literal["Bundle"]
    id: IdType | None = None
    meta: _Meta | None = None
    type: CodeType
    timestamp: InstantType | None = None
    entry: list[_FastEntry]


class FastBundleShell(_Fast):
    resourceType: Literal["Bundle"]
    id: IdType | None = None
    meta: _Meta | None = None
    type: CodeType
    timestamp: InstantType | None = None
    entry: list[_BundleEntry] | None = None


# ---- the facts ICC reads from an Encounter ---------------------------------------------------------


@dataclass(frozen=True)
class Codes:
    """The codings of a CodeableConcept as (system, code) pairs, and its text."""

    codings: tuple[tuple[str, str], ...] = ()
    text: str | None = None

    def first_code(self) -> str | None:
        return self.codings[0][1] if self.codings else None


@dataclass(frozen=True)
class EncounterFacts:
    resource_id: str | None
    version_id: str | None
    status: str
    class_system: str | None
    class_code: str | None
    nhs_number: str | None = None
    mrn: str | None = None
    mrn_system: str | None = None
    patient_reference: str | None = None
    visit_number: str | None = None
    visit_system: str | None = None
    location_code: str | None = None
    location_display: str | None = None
    location_expression: str | None = None
    location_start: dt.datetime | None = None
    period_start: dt.datetime | None = None
    period_end: dt.datetime | None = None
    last_updated: dt.datetime | None = None
    priority: Codes = field(default_factory=Codes)
    service_type: Codes = field(default_factory=Codes)
    admit_source: Codes = field(default_factory=Codes)
    discharge_disposition: Codes = field(default_factory=Codes)
    provider_code: str | None = None


def _aware(value: Any) -> dt.datetime | None:
    """A dateTime with a time (FHIR then requires a zone); partial dates tell no moment, so None."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value
    return None


def _codes(concept: Any) -> Codes:
    if concept is None:
        return Codes()
    codings = tuple((c.system or "", c.code) for c in (concept.coding or []) if c.code)
    return Codes(codings, concept.text)


def facts_of(encounter: Any) -> EncounterFacts:
    """What ICC needs from a validated Encounter (a fast model or a `fhir.resources` one: same shape)."""
    nhs_number = mrn = mrn_system = reference = None
    subject = encounter.subject
    if subject is not None:
        reference = subject.reference
        ident = subject.identifier
        if ident is not None and ident.value:
            if (ident.system or "") == NHS_NUMBER_SYSTEM:
                nhs_number = ident.value
            else:
                mrn, mrn_system = ident.value, ident.system
    visit = visit_system = None
    for ident in encounter.identifier or []:
        if ident.value and (visit is None or ident.use == "official"):
            visit, visit_system = ident.value, ident.system
    code = display = expression = None
    start = None
    for index, entry in enumerate(encounter.location or []):
        if entry.status != "active":
            continue
        ref = entry.location
        code = ref.identifier.value if ref.identifier is not None else None
        display = ref.display
        expression = f"Encounter.location[{index}].location." + ("identifier.value" if code else "display")
        start = _aware(entry.period.start) if entry.period is not None else None
    meta = encounter.meta
    provider = encounter.serviceProvider
    hospitalization = encounter.hospitalization
    return EncounterFacts(
        resource_id=encounter.id,
        version_id=meta.versionId if meta is not None else None,
        status=encounter.status,
        class_system=encounter.class_fhir.system,
        class_code=encounter.class_fhir.code,
        nhs_number=nhs_number,
        mrn=mrn,
        mrn_system=mrn_system,
        patient_reference=reference,
        visit_number=visit,
        visit_system=visit_system,
        location_code=code,
        location_display=display,
        location_expression=expression,
        location_start=start,
        period_start=_aware(encounter.period.start) if encounter.period is not None else None,
        period_end=_aware(encounter.period.end) if encounter.period is not None else None,
        last_updated=meta.lastUpdated if meta is not None else None,
        priority=_codes(encounter.priority),
        service_type=_codes(encounter.serviceType),
        admit_source=_codes(hospitalization.admitSource if hospitalization is not None else None),
        discharge_disposition=_codes(
            hospitalization.dischargeDisposition if hospitalization is not None else None
        ),
        provider_code=provider.identifier.value if provider is not None and provider.identifier else None,
    )


# ---- validation ------------------------------------------------------------------------------------


def _path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "class_fhir":
            path += ".class"
        elif part not in ("resource_type",):
            path += f".{part}"
    return path


_ISSUE_CODE = {
    "missing": "required",
    "model_field_validation.missing": "required",
    "extra_forbidden": "structure",
    "json_invalid": "structure",
    "json_type": "structure",
    "model_type": "structure",
    "dict_type": "structure",
    "list_type": "structure",
}


def issues_of(exc: ValidationError, prefix: str) -> list[Issue]:
    return [
        Issue(_ISSUE_CODE.get(err["type"], "value"), f"{err['msg']}", _path(prefix, tuple(err["loc"])))
        for err in exc.errors()
    ]


def _check_codes(facts: EncounterFacts, prefix: str) -> None:
    """Rules of R4's required bindings that `fhir.resources` leaves to the caller."""
    issues = []
    if facts.status not in R4_STATUSES:
        issues.append(
            Issue(
                "code-invalid",
                f"status {facts.status!r} is not an R4 Encounter status ({', '.join(R4_STATUSES)})",
                f"{prefix}.status",
            )
        )
    if not facts.class_code:
        issues.append(
            Issue("required", "class needs a code (v3 ActCode: IMP, EMER …)", f"{prefix}.class.code")
        )
    if issues:
        raise FhirInvalid(issues)


def validate_encounter(data: Any, prefix: str = "Encounter", *, fast: bool = True) -> EncounterFacts:
    """Validate one Encounter (a decoded JSON object); FhirInvalid names every problem and where."""
    if not isinstance(data, dict):
        raise FhirInvalid([Issue("structure", "expected a JSON object (a FHIR resource)", prefix)])
    if data.get("resourceType") != "Encounter":
        raise FhirInvalid(
            [
                Issue(
                    "not-supported",
                    f"resourceType {data.get('resourceType')!r} is not accepted here: send Encounter",
                    f"{prefix}.resourceType",
                )
            ]
        )
    encounter: Any = None
    if fast:
        try:
            encounter = FastEncounter.model_validate(data)
        except ValidationError:
            encounter = None
    if encounter is None:
        try:
            encounter = FhirEncounter.model_validate(data)
        except ValidationError as exc:
            raise FhirInvalid(issues_of(exc, prefix)) from exc
    facts = facts_of(encounter)
    _check_codes(facts, prefix)
    return facts


@dataclass
class BundleEntry:
    index: int
    method: str | None
    url: str | None
    full_url: str | None
    resource: dict[str, Any] | None = None  # decoded, when it was checked on its own
    model: FastEncounter | None = None  # validated already, when the whole body took the fast path


@dataclass
class ParsedBody:
    """A single Encounter (`bundle_type` None) or the entries of a transaction / batch Bundle."""

    bundle_type: Literal["transaction", "batch"] | None
    entries: list[BundleEntry]
    raw: bytes = b""
    _decoded: Any = None

    def resource_of(self, entry: BundleEntry) -> dict[str, Any] | None:
        """The entry's resource as sent (decoded on demand: the fast path never needed it)."""
        if entry.resource is not None or entry.model is None:
            return entry.resource
        if self._decoded is None:
            self._decoded = orjson.loads(self.raw)
        if self.bundle_type is None:
            return dict(self._decoded)
        resource = self._decoded["entry"][entry.index]["resource"]
        return dict(resource)


def _parse_fast(raw: bytes) -> ParsedBody | None:
    """The whole body in one validation, when it is within the fast model; None sends it the long way."""
    try:
        if b'"Bundle"' in raw[:200] or b'"Bundle"' in raw[-200:]:
            bundle = FastBundle.model_validate_json(raw)
        else:
            encounter = FastEncounter.model_validate_json(raw)
            return ParsedBody(None, [BundleEntry(0, None, None, None, model=encounter)], raw)
    except ValidationError:
        return None
    if bundle.type not in ("transaction", "batch") or not bundle.entry:
        return None  # the long way gives the proper answer
    entries = [
        BundleEntry(
            index,
            entry.request.method if entry.request is not None else None,
            entry.request.url if entry.request is not None else None,
            entry.fullUrl,
            model=entry.resource,
        )
        for index, entry in enumerate(bundle.entry)
    ]
    return ParsedBody(bundle.type, entries, raw)  # type: ignore[arg-type]


def parse_body(raw: bytes, *, fast: bool = True) -> ParsedBody:
    """Decode the body and check the Bundle around the resources; the resources are checked one by one."""
    if fast and (parsed := _parse_fast(raw)) is not None:
        return parsed
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FhirInvalid([Issue("structure", f"not JSON: {exc}")]) from exc
    if not isinstance(data, dict):
        raise FhirInvalid([Issue("structure", "expected a JSON object (a FHIR resource)")])
    kind = data.get("resourceType")
    if kind == "Encounter":
        return ParsedBody(None, [BundleEntry(0, None, None, None, data)], raw)
    if kind != "Bundle":
        raise FhirInvalid(
            [
                Issue(
                    "not-supported",
                    f"resourceType {kind!r} is not accepted here: send an Encounter or a Bundle of them",
                    "resourceType" if kind is None else kind,
                )
            ]
        )
    resources = [e.get("resource") if isinstance(e, dict) else None for e in data.get("entry") or []]
    shell = dict(data)
    if isinstance(data.get("entry"), list):
        # the shell is checked without its resources: each resource is validated on its own below
        shell["entry"] = [
            {k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
            for e in data["entry"]
        ]
    bundle: Any = None
    if fast:
        try:
            bundle = FastBundleShell.model_validate(shell)
        except ValidationError:
            bundle = None
    if bundle is None:
        try:
            bundle = FhirBundle.model_validate(shell)
        except ValidationError as exc:
            raise FhirInvalid(issues_of(exc, "Bundle")) from exc
    if bundle.type not in ("transaction", "batch"):
        raise FhirInvalid(
            [
                Issue(
                    "not-supported",
                    f"Bundle.type {bundle.type!r}: send a transaction or batch",
                    "Bundle.type",
                )
            ]
        )
    entries = [
        BundleEntry(
            index,
            entry.request.method if entry.request is not None else None,
            entry.request.url if entry.request is not None else None,
            entry.fullUrl,
            resources[index],
        )
        for index, entry in enumerate(bundle.entry or [])
    ]
    if not entries:
        raise FhirInvalid([Issue("required", "the Bundle has no entries", "Bundle.entry")])
    return ParsedBody(bundle.type, entries, raw)


def validate_entry(entry: BundleEntry, bundle_type: str | None, *, fast: bool = True) -> EncounterFacts:
    prefix = "Encounter" if bundle_type is None else f"Bundle.entry[{entry.index}].resource"
    if bundle_type is not None:
        if entry.resource is None and entry.model is None:
            raise FhirInvalid(
                [Issue("required", "the entry has no resource", f"Bundle.entry[{entry.index}].resource")]
            )
        if entry.method not in (None, "POST", "PUT"):
            raise FhirInvalid(
                [
                    Issue(
                        "not-supported",
                        f"request.method {entry.method!r}: only POST and PUT of an Encounter are taken",
                        f"Bundle.entry[{entry.index}].request.method",
                    )
                ]
            )
    if entry.model is not None:
        facts = facts_of(entry.model)
        _check_codes(facts, prefix)
        return facts
    return validate_encounter(entry.resource, prefix, fast=fast)
