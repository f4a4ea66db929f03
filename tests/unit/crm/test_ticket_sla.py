"""Ticket SLA windows and the ticket workflow table, as documented in docs/crm.md."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from bhiv.crm.models import Ticket, TicketPriority, TicketStatus
from bhiv.crm.settings import CrmSettings, TicketSla
from bhiv.crm.ticket_workflow import TICKET_WORKFLOW, refresh_due, start_sla

HOUR = dt.timedelta(hours=1)


def test_default_windows() -> None:
    sla = TicketSla()
    assert {p.value: sla.window(p) for p in TicketPriority} == {
        "urgent": 4 * HOUR,
        "high": 24 * HOUR,
        "medium": 72 * HOUR,
        "low": 168 * HOUR,
    }


def test_windows_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BHIV_TICKET_SLA", '{"urgent": "PT30M", "low": 86400}')
    sla = CrmSettings().ticket_sla
    assert (sla.urgent, sla.high, sla.low) == (dt.timedelta(minutes=30), 24 * HOUR, 24 * HOUR)


@pytest.mark.parametrize(
    "bad", ['{"urgent": "PT0S"}', '{"urgent": "P400D"}', '{"critical": "PT1H"}']
)
def test_bad_windows_are_refused(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("BHIV_TICKET_SLA", bad)
    with pytest.raises(ValidationError):
        CrmSettings()


def test_due_time_moves_with_priority_within_the_window() -> None:
    start = dt.datetime(2026, 1, 1, 9, 0, tzinfo=dt.UTC)
    ticket = Ticket(priority=TicketPriority.low)
    start_sla(ticket, TicketSla(), start)
    assert (ticket.sla_started_at, ticket.due_at) == (start, start + 168 * HOUR)
    ticket.priority = TicketPriority.urgent
    refresh_due(ticket, TicketSla())
    assert ticket.due_at == start + 4 * HOUR


@pytest.mark.parametrize(
    ("status", "allowed"),
    [
        ("open", ["in_progress", "resolved", "waiting"]),
        ("in_progress", ["resolved", "waiting"]),
        ("waiting", ["in_progress", "resolved"]),
        ("resolved", ["closed", "open"]),
        ("closed", ["open"]),
    ],
)
def test_workflow_table(status: str, allowed: list[str]) -> None:
    assert TICKET_WORKFLOW.allowed(TicketStatus(status)) == allowed
