"""runtime/status.py's write_status, the one status writer of every kind, against the API emulator
through the operator's own KubeClient: what the patch says and what the stored object then holds."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from k8s_emulator import running_emulator
from tuneloop.api import modeldeployment as mdep
from tuneloop.reconcile import core
from tuneloop.runtime.kube_client import KubeClient
from tuneloop.runtime.status import write_status

CRDS = list(yaml.safe_load_all((Path(__file__).resolve().parents[1] / "crds" / "tuneloop.dev_crds.yaml").read_text()))
MDEP = ("tuneloop.dev/v1alpha1", "ModelDeployment")
NAME = "acme-tickets"
KOPF = {"progress": {"modeldeployments-passes": {"started": "2026-12-03T22:00:00Z", "retries": 0}}}
ROLLING_OUT = mdep.ModelDeploymentStatus.model_validate({  # as a pass wrote it: every field
    "phase": "Progressing", "message": "waiting for green: 0/1 pods ready", "activeSelector": "blue",
    "active": {"colour": "blue", "revision": "r1", "adapterVersion": "1"},
    "preview": {"colour": "green", "revision": "r2", "adapterVersion": "2"}, "previewSelector": "green",
    "rollout": {"step": "Preview", "since": "2026-12-03T22:00:00Z", "started": "2026-12-03T22:00:00Z"},
}).to_wire()


class RecordingKubeClient(KubeClient):
    """The operator's client, keeping the body of every patch it sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.patches: list[dict] = []

    async def patch(self, *args: Any, **kwargs: Any) -> Any:
        self.patches.append(args[4])
        return await super().patch(*args, **kwargs)


def manifest() -> dict:
    return {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": "default"},
            "spec": {"baseModel": {"name": "smollm2-135m-instruct"}, "adapter": {"name": NAME, "version": "2"},
                     "serving": {"replicas": 2, "gpus": 1}}}


def with_emulator(test) -> None:
    """Run test(harness, client, resource): a ModelDeployment rolling out, its status as a pass reads it."""
    async def run() -> None:
        async with running_emulator(CRDS) as harness:
            harness.create(manifest())
            harness.patch_status(MDEP, "default", NAME, {**ROLLING_OUT, "kopf": KOPF})
            info = harness.connection_info()
            client = RecordingKubeClient(server=info.server.rstrip("/"), headers=info.as_http_headers())
            try:
                body = harness.get(MDEP, "default", NAME)
                await test(harness, client, core.read(mdep.ModelDeployment, mdep.ModelDeploymentStatus, body))
            finally:
                await client.close()
    asyncio.run(run())


def test_a_field_the_pass_cleared_is_sent_as_null_and_gone_while_kopf_s_own_status_stays():
    async def test(harness, client: RecordingKubeClient, resource: core.Resource) -> None:
        assert "kopf" not in resource.stored_status, "kopf's bookkeeping is not part of the status a pass reads"
        promoted = resource.status.model_copy(update={
            "phase": "Healthy", "message": "revision r2 (green) serving", "active_selector": "green",
            "active": resource.status.preview, "preview": None, "preview_selector": None, "rollout": None})
        written = await write_status(client, resource, promoted.to_wire())

        sent = client.patches[0]["status"]
        assert sent["rollout"] is None and sent["preview"] is None and sent["previewSelector"] is None
        assert "kopf" not in sent and "history" not in sent, "only what changed is sent"
        stored = harness.get(MDEP, "default", NAME)
        assert written == stored["metadata"]["resourceVersion"]
        status = stored["status"]
        assert status["kopf"] == KOPF
        assert not {"rollout", "preview", "previewSelector"} & status.keys()
        assert status["phase"] == "Healthy" and status["active"]["adapterVersion"] == "2"

    with_emulator(test)


def test_nothing_is_sent_when_nothing_changed():
    async def test(harness, client: RecordingKubeClient, resource: core.Resource) -> None:
        before = harness.get(MDEP, "default", NAME)["metadata"]["resourceVersion"]
        assert await write_status(client, resource, resource.status.to_wire()) is None
        assert client.patches == []
        assert harness.get(MDEP, "default", NAME)["metadata"]["resourceVersion"] == before

    with_emulator(test)


def test_an_object_deleted_while_the_pass_ran_is_not_an_error():
    async def test(harness, client: RecordingKubeClient, resource: core.Resource) -> None:
        harness.delete(MDEP, "default", NAME)
        healthy = resource.status.model_copy(update={"phase": "Healthy"})
        assert await write_status(client, resource, healthy.to_wire()) is None
        assert len(client.patches) == 1

    with_emulator(test)
