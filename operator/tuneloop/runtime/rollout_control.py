"""`tuneloop rollout promote|abort|retry|status NAME`: manual control of a ModelDeployment's rollout.

Like `kubectl argo rollouts promote|abort|retry|status`: the commands only set the annotation the
operator acts on (tuneloop.dev/promote, /abort, /retry), so GitOps users can set the same
annotations in their manifests, and the operator stays the only writer of the rollout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from tuneloop.api.common import fitted
from tuneloop.api.modeldeployment import KIND
from tuneloop.reconcile.modeldeployment import ABORT, PROMOTE, RETRY
from tuneloop.runtime.kube_client import KubeClient, KubeError

ANNOTATIONS = {"promote": PROMOTE, "abort": ABORT, "retry": RETRY}
API = ("tuneloop.dev/v1alpha1", KIND)


class RolloutControlError(RuntimeError):
    pass


def connect() -> tuple[KubeClient, str]:
    """A client from the in-cluster service account or the kubeconfig, and its default namespace."""
    import kopf

    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise RolloutControlError("no Kubernetes credentials: set KUBECONFIG or run inside a cluster")
    return KubeClient.from_connection_info(info), info.default_namespace or "default"


async def request(verb: str, name: str, namespace: str | None) -> dict[str, Any]:
    client, default_namespace = connect()
    namespace = namespace or default_namespace
    try:
        if verb == "status":
            found = await client.get(*API, namespace, name)
        else:
            stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            found = await client.patch(*API, namespace, name, {"metadata": {"annotations": {ANNOTATIONS[verb]: stamp}}})
    except KubeError as error:
        if error.status == 404:
            found = None
        else:
            raise RolloutControlError(f"ModelDeployment {namespace}/{name}: {error}") from None
    finally:
        await client.close()
    if found is None:
        raise RolloutControlError(f"ModelDeployment {namespace}/{name} does not exist")
    return found


@dataclass
class RolloutView:
    """One look at a ModelDeployment and what it runs: for `tuneloop rollout status --watch`."""

    md: dict[str, Any]
    deployments: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    services: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # "active"/"preview" -> Service


async def look(client: KubeClient, namespace: str, name: str) -> RolloutView:
    md = await client.get(*API, namespace, name)
    if md is None:
        raise RolloutControlError(f"ModelDeployment {namespace}/{name} does not exist")
    selector = f"tuneloop.dev/modeldeployment={fitted(name)}"
    strategy = ((md.get("spec") or {}).get("strategy") or {}).get("blueGreen") or {}
    service_names = {"active": strategy.get("activeService") or name,
                     "preview": strategy.get("previewService") or f"{name}-preview"}
    return RolloutView(
        md=md,
        deployments=await client.list("apps/v1", "Deployment", namespace, selector),
        pods=await client.list("v1", "Pod", namespace, selector),
        services={role: await client.get("v1", "Service", namespace, service)
                  for role, service in service_names.items()})


async def watch(name: str, namespace: str | None, show: Callable[[RolloutView], bool], interval: float) -> None:
    """Look every `interval` seconds and hand each view to `show` until it answers False."""
    client, default_namespace = connect()
    namespace = namespace or default_namespace
    try:
        while True:
            try:
                view = await look(client, namespace, name)
            except KubeError as error:
                raise RolloutControlError(f"ModelDeployment {namespace}/{name}: {error}") from None
            if not show(view):
                return
            await asyncio.sleep(interval)
    finally:
        await client.close()


def describe(md: dict[str, Any]) -> str:
    """What `status` prints: phase, both colours, conditions and the last rollouts."""
    status = md.get("status") or {}
    meta = md["metadata"]
    lines = [f"Name:     {meta['namespace']}/{meta['name']}",
             f"Phase:    {status.get('phase', 'Pending')}" + (" (aborted)" if status.get("abort") else ""),
             f"Message:  {status.get('message', '')}"]
    for role in ("active", "preview"):
        revision = status.get(role)
        if revision:
            score = f", score {revision['score']}" if revision.get("score") is not None else ""
            lines.append(f"{role.capitalize() + ':':<9} {revision['colour']} revision {revision['revision']} "
                         f"(adapter version {revision.get('adapterVersion') or '-'}{score})")
    if status.get("rollout"):
        lines.append(f"Step:     {status['rollout']['step']} since {status['rollout']['since']}")
    if status.get("failedRevision"):
        lines.append(f"Failed:   revision {status['failedRevision']} (not retried until `tuneloop rollout retry`)")
    for condition in status.get("conditions") or []:
        lines.append(f"Condition {condition['type']}={condition['status']} {condition['reason']}: "
                     f"{condition.get('message', '')}".rstrip(": "))
    if status.get("history"):
        lines.append("Rollouts (newest last):")
        for record in status["history"]:
            lines.append(f"  {record['time']}  {record['revision']}  v{record.get('adapterVersion') or '-':<4} "
                         f"{record['outcome']:<10} {record['reason']}")
    return "\n".join(lines)


def run(verb: str, name: str, namespace: str | None) -> str:
    md = asyncio.run(request(verb, name, namespace))
    if verb == "status":
        return describe(md)
    return f"modeldeployment.tuneloop.dev/{name}: {verb} requested ({ANNOTATIONS[verb]})"
