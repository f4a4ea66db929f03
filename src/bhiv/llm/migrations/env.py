from alembic import context

from bhiv.core.migrations import run_env
from bhiv.llm.models import Base

run_env(context, Base.metadata)
