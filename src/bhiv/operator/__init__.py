"""The BHIV operator: BhivModule resources become Deployments, Services,
HorizontalPodAutoscalers and PodDisruptionBudgets, started in dependency order.

Layers, each importing only those below it:
  model, graph, status, builders   pure: spec -> decisions -> manifests (no I/O)
  kube                             the Kubernetes API, on bhiv.kube (server-side apply, status)
  reconcile, workqueue             one module's level-based reconcile, and its queue
  handlers, main                   Kopf wiring and the `bhiv operator` entry point
"""

from bhiv.kube import GROUP, KIND, PLURAL, VERSION

__all__ = ["FIELD_MANAGER", "GROUP", "KIND", "PLURAL", "VERSION"]

FIELD_MANAGER = "bhiv-operator"
