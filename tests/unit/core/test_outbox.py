"""The transactional outbox: events exist exactly when their transaction commits,
and the relay marks an event sent only after the integrations service said 2xx."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bhiv.core.client import ServiceClient, UpstreamError
from bhiv.core.db import Database, new_metadata, utcnow
from bhiv.core.outbox import Outbox, OutboxCollector, RelayBlocked


class Base(DeclarativeBase):
    metadata = new_metadata()


class Thing(Base):
    __tablename__ = "things"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


OUTBOX = Outbox(Base.metadata, source="unit")


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'unit.db'}")
    Base.metadata.create_all(database.engine)
    return database


def client(answer: Callable[[httpx.Request], httpx.Response], seen: list[dict]) -> ServiceClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return answer(request)

    return ServiceClient(
        "integrations",
        "http://integrations.test",
        attempts=1,
        transport=httpx.MockTransport(handler),
    )


def unsent(db: Database) -> list[str]:
    with db.session(write=False) as s:
        return list(s.scalars(select(OUTBOX.table.c.type).where(OUTBOX.table.c.sent_at.is_(None))))


def test_publish_commits_and_rolls_back_with_the_change(db: Database) -> None:
    with db.session() as s:
        s.add(Thing(name="kept"))
        OUTBOX.publish(s, "thing.created", {"name": "kept"})
        s.commit()
    with db.session() as s:
        s.add(Thing(name="dropped"))
        OUTBOX.publish(s, "thing.created", {"name": "dropped"})
        s.rollback()
    pending = OUTBOX.pending(db, 10)
    assert [(e.type, e.data) for e in pending] == [("thing.created", {"name": "kept"})]
    assert pending[0].event_id.startswith("evt_")


def test_relay_marks_sent_only_after_2xx(db: Database) -> None:
    with db.session() as s:
        for n in range(3):
            OUTBOX.publish(s, f"thing.n{n}", {"n": n})
        s.commit()
    seen: list[dict] = []
    sent = asyncio.run(OUTBOX.relay_once(db, client(lambda r: httpx.Response(201), seen), {}, 10))
    assert sent == 3 and unsent(db) == []
    assert [b["type"] for b in seen] == ["thing.n0", "thing.n1", "thing.n2"]
    assert seen[0]["source"] == "unit" and seen[0]["data"] == {"n": 0} and seen[0]["occurred_at"]
    # Nothing is sent twice once acknowledged.
    assert (
        asyncio.run(OUTBOX.relay_once(db, client(lambda r: httpx.Response(201), seen), {}, 10)) == 0
    )


def test_a_failing_integrations_service_leaves_events_pending(db: Database) -> None:
    with db.session() as s:
        OUTBOX.publish(s, "thing.a", {})
        OUTBOX.publish(s, "thing.b", {})
        s.commit()
    seen: list[dict] = []
    with pytest.raises(UpstreamError):
        asyncio.run(OUTBOX.relay_once(db, client(lambda r: httpx.Response(503), seen), {}, 10))
    assert (
        unsent(db) == ["thing.a", "thing.b"] and len(seen) == 1
    )  # the batch stops at the first 5xx

    def refused(r: httpx.Request) -> httpx.Response:
        return httpx.Response(422 if json.loads(r.content)["type"] == "thing.a" else 200)

    assert asyncio.run(OUTBOX.relay_once(db, client(refused, seen), {}, 10)) == 1
    # A refused event stays, with its error, and is retried later rather than dropped.
    assert unsent(db) == ["thing.a"]
    with db.session(write=False) as s:
        row = s.execute(select(OUTBOX.table).where(OUTBOX.table.c.type == "thing.a")).one()
    assert row.attempts == 1 and row.last_error.startswith("422") and OUTBOX.pending(db, 10) == []


def test_unreachable_integrations_service_raises_and_keeps_everything(db: Database) -> None:
    with db.session() as s:
        OUTBOX.publish(s, "thing.c", {})
        s.commit()

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(httpx.ConnectError):
        asyncio.run(OUTBOX.relay_once(db, client(down, []), {}, 10))
    assert unsent(db) == ["thing.c"]


def test_a_refused_relay_pauses_without_postponing_events(db: Database) -> None:
    # Wrong credentials are the relay's problem, not the event's: nothing is
    # postponed, so the events go as soon as the key is fixed.
    with db.session() as s:
        OUTBOX.publish(s, "thing.d", {})
        s.commit()
    with pytest.raises(RelayBlocked):
        asyncio.run(OUTBOX.relay_once(db, client(lambda r: httpx.Response(401), []), {}, 10))
    assert [e.attempts for e in OUTBOX.pending(db, 10)] == [0]


def test_backlog_metrics_count_unacknowledged_events_and_the_oldest_ones_age(
    db: Database,
) -> None:
    registry = CollectorRegistry()
    registry.register(OutboxCollector(db, OUTBOX))

    def sample(name: str) -> float:
        value = registry.get_sample_value(name)
        assert value is not None, generate_latest(registry).decode()
        return value

    assert sample("bhiv_outbox_pending_events") == 0
    assert sample("bhiv_outbox_oldest_pending_age_seconds") == 0
    with db.session() as s:
        OUTBOX.publish(s, "thing.old", {})
        s.commit()
    with db.session() as s:  # published two minutes ago
        s.execute(OUTBOX.table.update().values(occurred_at=utcnow() - dt.timedelta(minutes=2)))
        OUTBOX.publish(s, "thing.new", {})
        s.commit()
    assert sample("bhiv_outbox_pending_events") == 2
    assert 120 <= sample("bhiv_outbox_oldest_pending_age_seconds") < 180
    asyncio.run(OUTBOX.relay_once(db, client(lambda r: httpx.Response(201), []), {}, 10))
    assert sample("bhiv_outbox_pending_events") == 0
    assert sample("bhiv_outbox_oldest_pending_age_seconds") == 0
