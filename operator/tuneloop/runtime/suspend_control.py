"""`tuneloop suspend|resume NAME`: set a FineTuneJob's spec.suspend with a JSON merge patch, the same
request as `kubectl patch ftj NAME --type merge -p '{"spec":{"suspend":true}}'`. The operator does the
rest (stops the stage's Job, the trainer checkpoints; later launches it again and training resumes), so
GitOps users can set the same field in their manifests."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from tuneloop.api.finetunejob import KIND, TERMINAL_PHASES
from tuneloop.runtime.kube_client import KubeError
from tuneloop.runtime.rollout_control import RolloutControlError, connect

API = ("tuneloop.dev/v1alpha1", KIND)


class SuspendError(RuntimeError):
    """The FineTuneJob is missing, has ended, or the API refused: the message names the object."""


@dataclass(frozen=True)
class SuspendOutcome:
    namespace: str
    name: str
    suspend: bool
    changed: bool  # False: spec.suspend already said so
    phase: str  # the job's phase when the patch was sent


def kubectl_equivalent(name: str, namespace: str, suspend: bool) -> str:
    patch = json.dumps({"spec": {"suspend": suspend}}, separators=(",", ":"))
    return f"kubectl patch ftj {name} -n {namespace} --type merge -p '{patch}'"


async def set_suspend(name: str, namespace: str | None, suspend: bool) -> SuspendOutcome:
    try:
        client, default_namespace = connect()
    except RolloutControlError as error:
        raise SuspendError(str(error)) from None
    namespace = namespace or default_namespace
    where = f"FineTuneJob {namespace}/{name}"
    try:
        job = await client.get(*API, namespace, name)
        if job is None:
            raise SuspendError(f"{where} does not exist")
        phase = (job.get("status") or {}).get("phase", "Pending")
        if phase in TERMINAL_PHASES:
            raise SuspendError(f"{where} has ended ({phase}): there is nothing to "
                               f"{'suspend' if suspend else 'resume'}")
        changed = bool((job.get("spec") or {}).get("suspend", False)) != suspend
        if changed:
            await client.patch(*API, namespace, name, {"spec": {"suspend": suspend}})
    except KubeError as error:
        if error.status == 404:
            raise SuspendError(f"{where} does not exist") from None
        raise SuspendError(f"{where}: {error}") from None
    finally:
        await client.close()
    return SuspendOutcome(namespace=namespace, name=name, suspend=suspend, changed=changed, phase=phase)


def run(name: str, namespace: str | None, suspend: bool) -> SuspendOutcome:
    return asyncio.run(set_suspend(name, namespace, suspend))
