"""Events the operator posts: valid core/v1 Events, stored when post() returns, never fatal to a pass."""

from __future__ import annotations

import asyncio
import logging

import kubernetes_validate

from k8s_emulator import running_emulator
from tuneloop.retry import RetryPolicy
from tuneloop.runtime.events import EventRecorder, event_manifest
from tuneloop.runtime.kube_client import KubeClient

MDEP = {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "acme-tickets", "namespace": "default", "uid": "8d1c", "resourceVersion": "7"}}


def test_an_event_is_a_valid_core_v1_event_about_the_object_with_its_message_within_the_limit():
    event = event_manifest(MDEP, "Warning", "ReadinessTimeout", "x" * 5000, "tuneloop-operator-7f9c")
    kubernetes_validate.validate(event, "1.33.0", strict=True)
    assert event["involvedObject"] == {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "ModelDeployment",
                                       "name": "acme-tickets", "namespace": "default", "uid": "8d1c",
                                       "resourceVersion": "7"}
    assert len(event["message"]) == 1024 and event["message"].endswith("...")
    assert event["metadata"] == {"namespace": "default", "generateName": "acme-tickets."}


def test_post_returns_once_the_event_is_stored_and_a_refused_event_is_logged_not_raised(caplog):
    async def scenario():
        async with running_emulator() as harness:
            client = KubeClient(server=harness.url, headers={"Authorization": "Bearer test"},
                                retry=RetryPolicy(attempts=1))
            recorder = EventRecorder(client, instance="operator-0")
            await recorder.post(MDEP, "Normal", "Promoted", "revision 2 takes the traffic")
            (stored,) = harness.list_objects(("v1", "Event"), "default")
            assert stored["reason"] == "Promoted" and stored["metadata"]["name"].startswith("acme-tickets.")
            assert stored["source"] == {"component": "tuneloop-operator"}
            assert stored["reportingInstance"] == "operator-0"

            elsewhere = {**MDEP, "metadata": {**MDEP["metadata"], "namespace": "no-such-namespace"}}
            with caplog.at_level(logging.WARNING, logger="tuneloop.events"):
                await recorder.post(elsewhere, "Warning", "AnalysisFailed", "p95 latency 9 s")
            assert "could not post the Warning Event AnalysisFailed about no-such-namespace/acme-tickets" in caplog.text
            await client.close()

    asyncio.run(scenario())
