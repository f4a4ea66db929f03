"""`bhiv operator`: run the operator, namespace-scoped or cluster-wide."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import kopf
from prometheus_client import start_http_server

from bhiv.operator import metrics


def run(
    *,
    namespaces: list[str],
    clusterwide: bool,
    peering: str | None,
    priority: int,
    liveness_port: int,
    metrics_port: int,
    kubeconfig: str | None,  # also exported as KUBECONFIG by the caller, before kopf is imported
    cluster_domain: str,
    listen_host: str = "0.0.0.0",  # noqa: S104 - probes and scrapes come from outside the pod
    verbose: bool = False,
    allowed_images: tuple[str, ...] = (),
    shared_secret: str | None = None,
    bootstrap_dir: Path | None = None,
    resync_seconds: float = 60.0,
) -> None:
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON, log_prefix=True)
    logging.getLogger("httpx2").setLevel(logging.WARNING)

    from bhiv.operator import handlers  # noqa: F401 - registers the handlers
    from bhiv.operator.kube import load_config

    load_config(kubeconfig)
    if bootstrap_dir is not None:
        # Before Kopf starts: the KopfPeering it joins may be among these.
        from bhiv.operator.bootstrap import apply_manifests, load_manifests
        from bhiv.operator.kube import Kube

        async def bootstrap(kube: Kube) -> None:
            try:
                await apply_manifests(kube, namespaces[0], load_manifests(bootstrap_dir))
            finally:
                await kube.close()  # its connections belong to this loop, not Kopf's

        asyncio.run(bootstrap(Kube()))
    if metrics_port:
        start_http_server(metrics_port, addr=listen_host, registry=metrics.registry)
    memo = kopf.Memo(
        standalone=peering is None,
        cluster_domain=cluster_domain,
        clusterwide=clusterwide,
        allowed_images=allowed_images,
        shared_secret=shared_secret,
        namespaces=list(namespaces),
        resync_seconds=resync_seconds,
    )
    asyncio.run(
        kopf.operator(
            clusterwide=clusterwide,
            namespaces=namespaces,
            standalone=peering is None,
            peering_name=peering,
            priority=priority,
            liveness_endpoint=f"http://{listen_host}:{liveness_port}/healthz"
            if liveness_port
            else None,
            memo=memo,
        )
    )
