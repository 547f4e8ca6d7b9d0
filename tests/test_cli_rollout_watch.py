"""`tuneloop rollout status NAME --watch` against the real operator on the API emulator: it shows both
colours, their pods and the analysis, follows a paused rollout through its promotion and ends by
itself when the rollout ends. Without a terminal it prints plain text, one block per change."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from test_operator_modeldeployment import NAME, manifest, operator_env, play, ticket_bot, tuneloop

__all__ = ["operator_env"]  # the fixture, shared with the operator's rollout tests

POD = ("v1", "Pod")


def pod(name: str, colour: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"tuneloop.dev/modeldeployment": NAME, "tuneloop.dev/colour": colour}},
            "spec": {"containers": [{"name": "vllm", "image": "vllm"}]}}


def test_watch_follows_a_paused_rollout_through_its_promotion_and_ends_by_itself(operator_env):
    v1, v2 = ticket_bot(), ticket_bot()

    async def body(s, operator):
        async with operator():
            s.harness.create(manifest({"name": NAME, "version": "1"}, autoPromotionEnabled=False))
            await s.phase("Paused")
            assert (await tuneloop("rollout", "promote", NAME)).returncode == 0
            await s.phase("Healthy")
            s.set_adapter({"name": NAME, "version": "2"})
            await s.phase("Paused")
            for name, colour, ready in (("acme-tickets-blue-a", "blue", True), ("acme-tickets-green-a", "green", False)):
                s.harness.create(pod(name, colour))
                s.harness.patch_status(POD, "default", name, {"phase": "Running", "conditions": [
                    {"type": "Ready", "status": "True" if ready else "False"}]})

            watcher = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tuneloop.cli", "rollout", "status", NAME, "--watch", "--interval", "0.2",
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            first = []
            while not first or first[-1] != "    verdict passed":
                line = (await asyncio.wait_for(watcher.stdout.readline(), 30)).decode()
                assert line, "the watch ended before the rollout did: " + "".join(first)
                first.append(line.rstrip("\n"))
            paused = "\n".join(first)
            assert "ModelDeployment default/acme-tickets: Paused" in paused
            assert "  blue (active): adapter version 1" in paused and "  green (preview): adapter version 2" in paused
            assert "    traffic 100% of the traffic (active Service)" in paused
            assert "    traffic 0% (preview Service: the analysis only)" in paused
            assert "    pod acme-tickets-blue-a: Running, ready" in paused
            assert "    pod acme-tickets-green-a: Running, not ready" in paused
            assert "    step Paused since" in paused
            assert "    checks 1 smoke prompts, 6 requests, error rate <= 0.0, p95 latency <= 5000 ms" in paused

            assert (await tuneloop("rollout", "promote", NAME)).returncode == 0
            rest, stderr = await asyncio.wait_for(watcher.communicate(), 60)
            assert watcher.returncode == 0, stderr.decode()
            last = rest.decode().split("--- ")[-1]
            assert "ModelDeployment default/acme-tickets: Healthy" in last
            green_lines = last[last.index("  green (active)"):]
            assert "traffic 100% of the traffic (active Service)" in green_lines.split("\n  blue")[0]
            assert "    verdict Promoted" in last
            assert "\x1b[" not in paused + rest.decode(), "no colour codes without a terminal"

    asyncio.run(play(operator_env, {"1": v1, "2": v2}, body))


def test_watching_a_deployment_that_does_not_exist_says_so(operator_env):
    async def body(s, operator):
        missing = await tuneloop("rollout", "status", "no-such-deployment", "--watch")
        assert missing.returncode == 1 and "default/no-such-deployment does not exist" in missing.stderr
        assert "Traceback" not in missing.stderr

    asyncio.run(play(operator_env, {}, body))
