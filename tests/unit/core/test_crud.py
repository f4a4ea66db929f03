"""Row locks requested by the CRUD helpers, as PostgreSQL would receive them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Integer, String, create_engine, event, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from bhiv.core.crud import get_or_404, require_reference
from bhiv.core.errors import Problem


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add(Account(id=1, name="a"))
        s.commit()
        yield s
    engine.dispose()


@pytest.fixture
def statements(session: Session) -> list[str]:
    """Each ORM SELECT the session runs, compiled for PostgreSQL (SQLite drops row locks)."""
    seen: list[str] = []

    @event.listens_for(session, "do_orm_execute")
    def capture(state) -> None:  # noqa: ANN001
        seen.append(str(state.statement.compile(dialect=postgresql.dialect())))

    return seen


def test_get_or_404_without_lock_reads_plainly(session: Session, statements: list[str]) -> None:
    session.expunge_all()
    assert get_or_404(session, Account, 1).name == "a"
    assert statements and not any("FOR " in s for s in statements)


def test_get_or_404_with_lock_selects_for_update_and_refreshes(
    session: Session, statements: list[str]
) -> None:
    account = session.get(Account, 1)
    # Changed behind the identity map's back, as a concurrent transaction would.
    session.execute(
        update(Account)
        .where(Account.id == 1)
        .values(name="b")
        .execution_options(synchronize_session=False)
    )
    assert get_or_404(session, Account, 1).name == "a"
    locked = get_or_404(session, Account, 1, lock=True)
    assert locked is account and locked.name == "b"
    assert statements[-1].endswith("FOR UPDATE")


def test_get_or_404_with_lock_still_404s(session: Session) -> None:
    with pytest.raises(Problem) as caught:
        get_or_404(session, Account, 2, lock=True)
    assert caught.value.status == 404


def test_require_reference_with_lock_takes_a_key_share_lock(
    session: Session, statements: list[str]
) -> None:
    require_reference(session, Account, 1, "account_id", lock=True)
    assert statements[-1].endswith("FOR KEY SHARE")
    with pytest.raises(Problem) as caught:
        require_reference(session, Account, 2, "account_id", lock=True)
    assert caught.value.status == 422 and (caught.value.errors or [{}])[0]["field"] == "account_id"
