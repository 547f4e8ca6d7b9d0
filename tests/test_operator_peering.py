"""Two operator replicas with kopf peering: the lower-priority one pauses and only one acts.

Both replicas run in this process (each with its own kopf registry); in a cluster they are two pods.
"""

from __future__ import annotations

import asyncio
import logging

import kopf
import pytest

from k8s_emulator import PEERING_CRD, handlers_registry, kopf_test_settings, running_emulator
from test_operator import CRDS, EXAMPLE, JOB, operator_env  # noqa: F401  (a fixture)

PEERING = "tuneloop"


def replica_settings(priority: int) -> kopf.OperatorSettings:
    settings = kopf_test_settings()
    settings.peering.name = PEERING
    settings.peering.priority = priority
    settings.peering.lifetime = 5
    settings.peering.mandatory = True
    return settings


def test_two_replicas_never_both_act(operator_env, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="kopf")

    def logged(text: str) -> bool:
        return any(text in message for message in caplog.messages)

    async def scenario():
        async with running_emulator([*CRDS, PEERING_CRD]) as harness:
            harness.create({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                            "metadata": {"name": PEERING, "namespace": "default"}})
            monkeypatch.setenv("KUBECONFIG", str(harness.write_kubeconfig(operator_env / "kubeconfig")))
            leader = harness.kopf_operator(handlers_registry("tuneloop.handlers"),
                                           settings=replica_settings(100), standalone=False, timeout=30)
            follower = harness.kopf_operator(handlers_registry("tuneloop.handlers"),
                                             settings=replica_settings(50), standalone=False, timeout=30)
            async with follower:
                async with leader:
                    await harness.wait_for(lambda: logged("Pausing operations in favour of"), 15)
                    harness.create(EXAMPLE)
                    await harness.wait_for(lambda: harness.get(JOB, "default", "acme-tickets-train"))
                    await asyncio.sleep(3)  # both replicas had time to act on it (and their timers to fire)
                    # Create-if-absent would hide a second actor's Job, so count the handlings too.
                    assert sum("Creation is processed" in m for m in caplog.messages) == 1
                    assert len(harness.list_objects(JOB, include_deleted=True)) == 1

    asyncio.run(scenario())
