"""Per-request context carried across awaits and threads (contextvars).

The request ID and the caller's credentials are set by the middleware and the
auth dependency, read by the log formatter and by the inter-service client so
that both propagate without being passed through every function.
"""

from __future__ import annotations

from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("bhiv_request_id", default=None)
# The caller's credential headers (Authorization, X-API-Key) as received,
# forwarded on inter-service calls so the callee sees the same caller identity.
credentials_var: ContextVar[dict[str, str] | None] = ContextVar("bhiv_credentials", default=None)
