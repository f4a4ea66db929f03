"""The security contexts every BHIV pod runs with: Kubernetes' restricted Pod
Security profile, the single source for the operator's module pods and (through
hack/generate, charts/bhiv/templates/_security.tpl) the chart's own pods."""

from __future__ import annotations

from typing import Any

# The image's numeric user (the Dockerfile writes its passwd entry).
RUN_AS_USER = 10001

POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "fsGroup": RUN_AS_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}

CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def container_security_context(overrides: dict[str, Any]) -> dict[str, Any]:
    """The restricted context with a module's own settings on top.

    What a module may set is limited by the CRD (its CEL rules refuse anything the
    restricted profile forbids), so the merge cannot weaken the profile.
    """
    merged = {**CONTAINER_SECURITY_CONTEXT, **overrides}
    if "capabilities" in overrides:
        merged["capabilities"] = {"drop": ["ALL"], **overrides["capabilities"]}
    return merged
