"""Two operator replicas (two `tuneloop operator` processes, as two pods would be) with kopf peering:
only the higher-priority one acts, and the other takes over when it stops."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from k8s_emulator import PEERING_CRD, running_emulator
from stage_results import DATA_CHECKED
from test_operator import CRDS, EXAMPLE, JOB, finish_job, operator_env  # noqa: F401  (a fixture)

PEERING = ("kopf.dev/v1", "KopfPeering")


def start_replica(priority: int, env: dict[str, str], log: Path, *mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tuneloop.cli", "operator", "--namespace", "default", "--priority", str(priority),
         *(mode or ("--peering-name", "tuneloop")), "--health-port", "0", "--metrics-port", "0",
         "--log-format", "text"],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


async def stop(replica: subprocess.Popen) -> None:
    """SIGTERM, as the kubelet does; the emulator shares this event loop, so wait without blocking it."""
    replica.send_signal(signal.SIGTERM)
    for _ in range(300):
        if replica.poll() is not None:
            return
        await asyncio.sleep(0.1)
    replica.kill()


def test_two_replicas_never_both_act_and_the_second_takes_over(operator_env):
    logs = {priority: operator_env / f"replica-{priority}.log" for priority in (100, 50)}

    async def scenario():
        async with running_emulator([*CRDS, PEERING_CRD]) as harness:
            harness.create({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                            "metadata": {"name": "tuneloop", "namespace": "default"}})
            env = {**os.environ, "KUBECONFIG": str(harness.write_kubeconfig(operator_env / "kubeconfig"))}
            replicas = {priority: start_replica(priority, env, log) for priority, log in logs.items()}
            try:
                # Both replicas have announced themselves in the peering object.
                await harness.wait_for(
                    lambda: len((harness.get(PEERING, "default", "tuneloop") or {}).get("status") or {}) == 2, 60)
                harness.create(EXAMPLE)
                await harness.wait_for(lambda: harness.get(JOB, "default", "acme-tickets-validate"), 30)
                await asyncio.sleep(3)  # time for a second actor to show itself
                assert len(harness.list_objects(JOB, include_deleted=True)) == 1

                await stop(replicas[100])
                finish_job(harness, DATA_CHECKED, "acme-tickets-validate")
                await harness.wait_for(lambda: harness.get(JOB, "default", "acme-tickets-train"), 30)
            finally:
                for replica in replicas.values():
                    await stop(replica)

    asyncio.run(scenario())
    leader, follower = logs[100].read_text(), logs[50].read_text()
    assert "validate workload acme-tickets-validate launched" in leader
    assert "launched" not in follower.split("train workload")[0]  # nothing until the leader left
    assert "train workload acme-tickets-train launched" in follower  # it took the running job over
    assert "Traceback" not in leader + follower


def test_a_standalone_operator_acts_without_any_peering_object(operator_env):
    """`tuneloop operator --standalone` as the README documents it: no KopfPeering CRD, no peering object."""
    log = operator_env / "standalone.log"

    async def scenario():
        async with running_emulator(CRDS) as harness:
            env = {**os.environ, "KUBECONFIG": str(harness.write_kubeconfig(operator_env / "kubeconfig"))}
            replica = start_replica(1, env, log, "--standalone")
            try:
                harness.create(EXAMPLE)
                await harness.wait_for(lambda: harness.get(JOB, "default", "acme-tickets-validate"), 60)
            finally:
                await stop(replica)

    asyncio.run(scenario())
    assert "validate workload acme-tickets-validate launched" in log.read_text()
    assert "Traceback" not in log.read_text()

