"""``bhiv.core``: the framework every BHIV service is built on.

A service declares a :class:`ServiceSpec` (name, settings class, routers,
models' metadata, migrations) and gets from :func:`create_app` an app with
settings, database, migrations, auth, problem+json errors, pagination, request
IDs, JSON logs, health/info/metrics endpoints and an inter-service client.
"""

from bhiv.core.app import ServiceSpec, create_app
from bhiv.core.auth import Identity, current_identity, public_operation, require
from bhiv.core.client import ServiceClient
from bhiv.core.db import Database, SessionDep, UTCDateTime, get_session, new_metadata, utcnow
from bhiv.core.errors import Problem, conflict, field_problem, not_found
from bhiv.core.pagination import Page, PageParams, page_params, paginate
from bhiv.core.settings import ServiceSettings

__all__ = [
    "Database",
    "Identity",
    "Page",
    "PageParams",
    "Problem",
    "ServiceClient",
    "ServiceSettings",
    "ServiceSpec",
    "SessionDep",
    "UTCDateTime",
    "conflict",
    "create_app",
    "current_identity",
    "field_problem",
    "get_session",
    "new_metadata",
    "not_found",
    "page_params",
    "paginate",
    "public_operation",
    "require",
    "utcnow",
]
