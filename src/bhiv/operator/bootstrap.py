"""What `kubectl apply -k manifests/` cannot do in the run that installs the CRDs.

kubectl maps every object to an API before it applies any, so custom resources in
the same run as their CustomResourceDefinitions fail ("ensure CRDs are installed
first") and a second run is needed. manifests/ therefore ships the BhivModules and
the KopfPeering in a ConfigMap, and the operator applies them at start-up, once the
API server serves their kinds (``--bootstrap DIR``). It also makes, once per
namespace, the Secret of shared secrets the sample modules read
(``--shared-secret NAME``), since kubectl cannot generate random values.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import yaml

from bhiv.kube import ApiError, status_code
from bhiv.operator import GROUP, KIND, VERSION
from bhiv.operator.kube import Kube

log = logging.getLogger("bhiv.operator.bootstrap")

BOOTSTRAP_MANAGER = "bhiv-operator-bootstrap"
# Only the kinds kubectl cannot apply next to their CRDs; anything else belongs in
# the kustomization itself.
BOOTSTRAP_KINDS = {(f"{GROUP}/{VERSION}", KIND), ("kopf.dev/v1", "KopfPeering")}
# The secrets every pod of a namespace must share (docs/helm.md, "Shared secrets").
SHARED_SECRET_KEYS = ("BHIV_JWT_SECRET", "BHIV_CREDENTIALS_KEY")
CRD_WAIT_SECONDS = 120.0


class BootstrapError(Exception):
    """A bootstrap file holds something the operator will not apply."""


def load_manifests(directory: Path) -> list[dict[str, Any]]:
    """Every YAML document in ``directory``'s files (sorted by name), checked."""
    docs: list[dict[str, Any]] = []
    for path in sorted(
        p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
    ):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            kind = (doc.get("apiVersion"), doc.get("kind"))
            if kind not in BOOTSTRAP_KINDS:
                allowed = ", ".join(f"{k} ({a})" for a, k in sorted(BOOTSTRAP_KINDS))
                raise BootstrapError(
                    f"{path.name}: {kind[1]} ({kind[0]}) is not applied at start-up; only {allowed}"
                )
            if not (doc.get("metadata") or {}).get("name"):
                raise BootstrapError(f"{path.name}: a {kind[1]} without metadata.name")
            docs.append(doc)
    return docs


async def apply_manifests(kube: Kube, namespace: str, docs: list[dict[str, Any]]) -> None:
    """Server-side apply each document into ``namespace``, waiting (bounded) for the
    API server to serve its kind: the CRDs may have been created a moment ago."""
    deadline = time.monotonic() + CRD_WAIT_SECONDS
    for doc in docs:
        obj = {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
        while True:
            try:
                await kube.apply(obj, manager=BOOTSTRAP_MANAGER)
                break
            except ApiError as exc:
                # 404: the CRD is not established yet, so its resource is not served.
                if status_code(exc) != 404 or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1)
        log.info("applied %s %s/%s", obj["kind"], namespace, obj["metadata"]["name"])


def build_shared_secret(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/part-of": "bhiv-core",
                "app.kubernetes.io/managed-by": "bhiv-operator",
            },
        },
        "stringData": {key: secrets.token_urlsafe(48) for key in SHARED_SECRET_KEYS},
    }


async def ensure_shared_secret(kube: Kube, namespace: str, name: str) -> bool:
    """Create the Secret with fresh random values unless one of that name exists.

    Create-only: the operator may create Secrets but never read, change or delete
    one, so a Secret made by hand (or a rotated key) is never overwritten. True
    when it was created now."""
    created = await kube.create(build_shared_secret(name, namespace))
    if created:
        log.info("created the shared-secrets Secret %s/%s", namespace, name)
    return created
