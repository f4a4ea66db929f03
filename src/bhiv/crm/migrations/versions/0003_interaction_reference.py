"""interactions.reference: the caller's own key, unique per customer

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 10:25:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reference", sa.String(length=100), nullable=True))
        batch_op.create_unique_constraint("uq_interactions_reference", ["customer_id", "reference"])


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_constraint("uq_interactions_reference", type_="unique")
        batch_op.drop_column("reference")
