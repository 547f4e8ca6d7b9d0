"""Kubernetes Events about the objects the operator reconciles.

An Event is posted, and awaited, inside the reconcile pass that decides it, so it is stored
before the status that announces the same change (the status is written when the pass ends).
Whoever sees the new phase (`kubectl get`, Argo CD, a test) finds its Event already there, and an
operator killed between the two loses no Event: the repeated pass posts it again. kopf's own
`kopf.event()` queues the Event to a background task instead, which can trail the status or be
lost with the process.

Events are information, not state: one that cannot be posted is logged and the pass goes on.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tuneloop.api.common import now_rfc3339
from tuneloop.runtime.kube_client import KubeClient, KubeError

log = logging.getLogger("tuneloop.events")
COMPONENT = "tuneloop-operator"
REPORTING_CONTROLLER = "tuneloop.dev/operator"  # a qualified name, as the API server requires
MAX_MESSAGE = 1024  # the API server's limit on an Event's message
MAX_INSTANCE = 128  # and on reportingInstance


def involved_object(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    reference = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "name": meta.get("name"),
                 "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                 "resourceVersion": meta.get("resourceVersion")}
    return {key: value for key, value in reference.items() if value}


def shortened(message: str) -> str:
    if len(message) <= MAX_MESSAGE:
        return message
    return message[:MAX_MESSAGE - 3] + "..."


def event_manifest(body: Mapping[str, Any], type: str, reason: str, message: str, instance: str) -> dict[str, Any]:
    involved = involved_object(body)
    now = now_rfc3339()
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"namespace": involved.get("namespace", "default"), "generateName": f"{involved['name']}."},
        "involvedObject": involved,
        "type": type, "reason": reason, "message": shortened(message), "action": "Reconcile",
        "source": {"component": COMPONENT},  # the "From" column of `kubectl describe`
        "reportingComponent": REPORTING_CONTROLLER, "reportingInstance": instance[:MAX_INSTANCE],
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }


@dataclass
class EventRecorder:
    client: KubeClient
    instance: str = field(default_factory=socket.gethostname)  # in a cluster: the pod's name

    async def post(self, body: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        event = event_manifest(body, type, reason, message, self.instance)
        try:
            await self.client.create(event)
        except KubeError as error:
            log.warning("could not post the %s Event %s about %s/%s: %s", type, reason,
                        event["involvedObject"].get("namespace"), event["involvedObject"].get("name"), error)
