"""The lead-score model: 0-100 points from six factors, documented in docs/crm.md.

The score is a sum of points per factor, so every response can show where each
point came from. It is stored on the lead and recomputed on every change; the
breakdown is recomputed on read from the same fields with the same function, so
the two always agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from bhiv.crm.models import Lead, LeadSource, LeadStage

STAGE_POINTS: dict[LeadStage, int] = {
    LeadStage.new: 0,
    LeadStage.contacted: 10,
    LeadStage.qualified: 20,
    LeadStage.proposal: 30,
    LeadStage.won: 30,
    LeadStage.lost: 0,
}
SOURCE_POINTS: dict[LeadSource, int] = {
    LeadSource.referral: 20,
    LeadSource.partner: 15,
    LeadSource.event: 10,
    LeadSource.website: 8,
    LeadSource.advertising: 5,
    LeadSource.cold_call: 3,
    LeadSource.other: 0,
}
# (at least this expected value, points), highest first; below the last: 0.
VALUE_BANDS: tuple[tuple[Decimal, int], ...] = (
    (Decimal("100000"), 25),
    (Decimal("25000"), 18),
    (Decimal("5000"), 12),
    (Decimal("0.01"), 5),
)
EMAIL_POINTS = 10
PHONE_POINTS = 5
COMPANY_POINTS = 10
MAX_SCORE = (
    max(STAGE_POINTS.values())
    + max(SOURCE_POINTS.values())
    + VALUE_BANDS[0][1]
    + EMAIL_POINTS
    + PHONE_POINTS
    + COMPANY_POINTS
)


@dataclass(frozen=True)
class Factor:
    factor: str
    value: str
    points: int
    max_points: int


@dataclass(frozen=True)
class LeadScore:
    total: int
    factors: tuple[Factor, ...]


def _value_points(expected_value: Decimal) -> int:
    for floor, points in VALUE_BANDS:
        if expected_value >= floor:
            return points
    return 0


def score_lead(lead: Lead) -> LeadScore:
    factors = (
        Factor("stage", lead.stage.value, STAGE_POINTS[lead.stage], max(STAGE_POINTS.values())),
        Factor(
            "source", lead.source.value, SOURCE_POINTS[lead.source], max(SOURCE_POINTS.values())
        ),
        Factor(
            "expected_value",
            f"{lead.expected_value:.2f}",
            _value_points(lead.expected_value),
            VALUE_BANDS[0][1],
        ),
        _presence("email", lead.email, EMAIL_POINTS),
        _presence("phone", lead.phone, PHONE_POINTS),
        _presence("company", lead.company, COMPANY_POINTS),
    )
    if lead.stage == LeadStage.lost:
        # A lost lead is worth no attention whatever else is known about it.
        return LeadScore(
            total=0, factors=tuple(Factor(f.factor, f.value, 0, f.max_points) for f in factors)
        )
    return LeadScore(total=sum(f.points for f in factors), factors=factors)


def _presence(name: str, value: str | None, points: int) -> Factor:
    return Factor(name, "present" if value else "missing", points if value else 0, points)
