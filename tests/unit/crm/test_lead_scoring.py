"""The lead-score model as documented in docs/crm.md."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bhiv.crm.lead_scoring import MAX_SCORE, score_lead
from bhiv.crm.models import Lead, LeadSource, LeadStage


def lead(**fields: object) -> Lead:
    values: dict[str, object] = {
        "stage": LeadStage.new,
        "source": LeadSource.other,
        "expected_value": Decimal("0"),
        "email": None,
        "phone": None,
        "company": None,
    }
    return Lead(**(values | fields))


def test_the_scale_is_0_to_100() -> None:
    assert MAX_SCORE == 100
    best = lead(
        stage=LeadStage.proposal,
        source=LeadSource.referral,
        expected_value=Decimal("100000"),
        email="a@b.example",
        phone="+1 555 0100",
        company="Acme",
    )
    assert score_lead(best).total == 100
    assert score_lead(lead()).total == 0


@pytest.mark.parametrize(
    ("stage", "points"),
    [("new", 0), ("contacted", 10), ("qualified", 20), ("proposal", 30), ("won", 30)],
)
def test_stage_points(stage: str, points: int) -> None:
    assert score_lead(lead(stage=LeadStage(stage))).total == points


@pytest.mark.parametrize(
    ("source", "points"),
    [
        ("referral", 20),
        ("partner", 15),
        ("event", 10),
        ("website", 8),
        ("advertising", 5),
        ("cold_call", 3),
        ("other", 0),
    ],
)
def test_source_points(source: str, points: int) -> None:
    assert score_lead(lead(source=LeadSource(source))).total == points


@pytest.mark.parametrize(
    ("value", "points"),
    [
        ("0", 0),
        ("0.01", 5),
        ("4999.99", 5),
        ("5000", 12),
        ("24999.99", 12),
        ("25000", 18),
        ("100000", 25),
        ("9999999999.99", 25),
    ],
)
def test_expected_value_bands(value: str, points: int) -> None:
    assert score_lead(lead(expected_value=Decimal(value))).total == points


def test_contact_details() -> None:
    assert score_lead(lead(email="a@b.example")).total == 10
    assert score_lead(lead(phone="+1 555 0100")).total == 5
    assert score_lead(lead(company="Acme")).total == 10


def test_factors_explain_every_point() -> None:
    score = score_lead(
        lead(
            stage=LeadStage.qualified,
            source=LeadSource.event,
            expected_value=Decimal("6000"),
            email="x@y.example",
        )
    )
    assert [(f.factor, f.value, f.points) for f in score.factors] == [
        ("stage", "qualified", 20),
        ("source", "event", 10),
        ("expected_value", "6000.00", 12),
        ("email", "present", 10),
        ("phone", "missing", 0),
        ("company", "missing", 0),
    ]
    assert score.total == sum(f.points for f in score.factors) == 52
    assert sum(f.max_points for f in score.factors) == MAX_SCORE


def test_a_lost_lead_scores_zero_on_every_factor() -> None:
    score = score_lead(
        lead(stage=LeadStage.lost, source=LeadSource.referral, email="a@b.example", company="Acme")
    )
    assert score.total == 0 and {f.points for f in score.factors} == {0}
    assert [f.value for f in score.factors][:2] == ["lost", "referral"]
