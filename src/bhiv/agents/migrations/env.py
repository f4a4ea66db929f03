from alembic import context

from bhiv.agents.models import Base
from bhiv.core.migrations import run_env

run_env(context, Base.metadata)
