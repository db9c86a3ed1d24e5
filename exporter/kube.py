"""Whether to watch the Kubernetes API, decided from flags and the environment."""

from __future__ import annotations

import logging
import os

from exporter.config import Config

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class KubernetesUnavailable(Exception):
    """--kubernetes=on was given but no cluster is configured."""


def cluster_configured(config: Config) -> str:
    """Return how a cluster is configured ("in-cluster", "kubeconfig") or ""."""
    if config.kubeconfig and os.path.exists(config.kubeconfig):
        return "kubeconfig"
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(SERVICE_ACCOUNT_TOKEN):
        return "in-cluster"
    return ""


def kubernetes_mode(config: Config) -> str:
    """Return "off", or how the pod watch reaches the cluster ("in-cluster", "kubeconfig").

    Raises KubernetesUnavailable for --kubernetes=on without a cluster.
    """
    if config.kubernetes == "off":
        return "off"
    configured_by = cluster_configured(config)
    if not configured_by:
        if config.kubernetes == "on":
            raise KubernetesUnavailable(
                "--kubernetes=on but no cluster is configured: no in-cluster service account "
                f"at {SERVICE_ACCOUNT_TOKEN} and no kubeconfig (set --kubernetes.kubeconfig)"
            )
        logger.info(
            "No Kubernetes cluster configured (no in-cluster service account, no kubeconfig); "
            "running without the pod watch"
        )
        return "off"
    return configured_by
