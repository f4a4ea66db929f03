"""One model of roles and methods for the services, the gateway and the clients."""

import pytest

from bhiv.core import client, roles
from bhiv.gateway import access, forwarder

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("held", "needed", "ok"),
    [
        (["viewer"], "viewer", True),
        (["viewer"], "editor", False),
        (["editor"], "viewer", True),
        (["admin"], "editor", True),
        (["editor", "viewer"], "admin", False),
        (["superuser"], "viewer", False),
        ([], "viewer", False),
    ],
)
def test_a_role_satisfies_itself_and_the_weaker_ones(
    held: list[str], needed: str, ok: bool
) -> None:
    assert roles.satisfies(held, needed) is ok


def test_the_ranking_and_the_permissions_agree() -> None:
    """Each role holds every permission of the roles before it (what `satisfies` assumes)."""
    for weaker, stronger in zip(roles.ROLES, roles.ROLES[1:], strict=False):
        assert roles.ROLE_PERMISSIONS[weaker] < roles.ROLE_PERMISSIONS[stronger]


def test_methods() -> None:
    assert roles.method_permission("get") == "read"
    assert roles.method_permission("PATCH") == "write"
    assert roles.SAFE_METHODS < roles.IDEMPOTENT_METHODS
    assert "POST" not in roles.IDEMPOTENT_METHODS and "PATCH" not in roles.IDEMPOTENT_METHODS


def test_the_gateway_and_the_service_client_retry_the_same_methods() -> None:
    used = {vars(m)["IDEMPOTENT_METHODS"] for m in (forwarder, client)}
    assert used == {roles.IDEMPOTENT_METHODS}
    assert vars(access)["SAFE_METHODS"] is roles.SAFE_METHODS
