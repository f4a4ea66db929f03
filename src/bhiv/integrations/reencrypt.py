"""Re-encrypt every stored secret with the first credentials key (`bhiv
reencrypt-credentials`), the step that lets a rotation drop the old key.

Rotation (docs/integrations.md, "Secrets"): put the new key first in
BHIV_CREDENTIALS_KEY and keep the old one after it (all keys decrypt, the first
encrypts); roll the pods; run this once; then remove the old key. One transaction:
if any secret opens with none of the keys, nothing is changed and the error says
which table and row.
"""

from __future__ import annotations

from sqlalchemy import select

from bhiv.core.db import Database
from bhiv.integrations.crypto import SecretBox, UnreadableSecret
from bhiv.integrations.models import Connection, Subscription, WebhookSource

# Every sealed column: (model, attribute), named in the report.
SEALED_COLUMNS = (
    (Connection, "credentials"),
    (WebhookSource, "secret"),
    (Subscription, "secret"),
)


def reencrypt_all(db: Database, box: SecretBox) -> dict[str, int]:
    """Reseal every stored secret with ``box``'s first key; counts per table."""
    counts: dict[str, int] = {}
    with db.session(write=True) as session, session.begin():
        for model, column in SEALED_COLUMNS:
            table = model.__tablename__
            counts[table] = 0
            for row in session.scalars(select(model).with_for_update()):
                token = getattr(row, column)
                if not token:
                    continue
                try:
                    setattr(row, column, box.reseal(token))
                except UnreadableSecret:
                    raise UnreadableSecret(
                        f"{table} id={getattr(row, 'id', '?')}: its {column} opens with none of the keys in "
                        "BHIV_CREDENTIALS_KEY; nothing was re-encrypted (keep the old key listed)"
                    ) from None
                counts[table] += 1
    return counts
