"""The BHIV collections a sync job can upsert into, through each service's API.

A sync never writes another service's database: it calls the service's API as
any client would, so that service's validation, uniqueness and rules apply.
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bhiv.integrations.models import SyncTarget


@dataclass(frozen=True)
class SyncDestination:
    service: str
    path: str
    natural_key: str  # matched (exactly) when a source record has no link yet
    fields: frozenset[str]
    required: tuple[str, ...]  # needed to create a record
    casefold: frozenset[str] = frozenset()  # compared without case (the service lower-cases them)


TARGETS: dict[SyncTarget, SyncDestination] = {
    SyncTarget.logistics_suppliers: SyncDestination(
        service="logistics",
        path="/suppliers",
        natural_key="name",
        fields=frozenset({"name", "contact_name", "email", "phone", "rating", "lead_time_days"}),
        required=("name",),
    ),
    SyncTarget.crm_customers: SyncDestination(
        service="crm",
        path="/customers",
        natural_key="email",
        fields=frozenset({"name", "company", "email", "phone", "status", "tags", "owner"}),
        required=("name", "email"),
        casefold=frozenset({"email"}),
    ),
}


def normalize(target: SyncDestination, name: str, value: Any) -> Any:
    """A comparable form of a field's value: the source may send 4.5 where the
    service answers "4.5", or " Asha " where it stores "Asha"."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float | decimal.Decimal):
        return _decimal_text(value)
    if isinstance(value, str):
        text = value.strip()
        if name in target.casefold:
            text = text.casefold()
        try:
            return _decimal_text(decimal.Decimal(text))
        except (decimal.InvalidOperation, ValueError):
            return text
    if isinstance(value, list):
        return sorted((normalize(target, name, v) for v in value), key=repr)
    return value


def _decimal_text(value: int | float | decimal.Decimal) -> Any:
    number = decimal.Decimal(str(value))
    if not number.is_finite():
        return str(value)
    return format(number.normalize(), "f")


def comparable(
    target: SyncDestination, values: Mapping[str, Any], names: set[str] | frozenset[str]
) -> dict[str, Any]:
    return {n: normalize(target, n, values.get(n)) for n in sorted(names)}
