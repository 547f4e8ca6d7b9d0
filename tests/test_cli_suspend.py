"""`tuneloop suspend NAME` and `tuneloop resume NAME` against the API emulator: the JSON merge patch of
spec.suspend lands on the FineTuneJob (nothing else in it changes), what was done is printed with the
kubectl command that does the same, and a missing or finished job is a one-line error."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from k8s_emulator import running_emulator

REPO = Path(__file__).resolve().parents[1]
CRDS = list(yaml.safe_load_all((REPO / "crds" / "tuneloop.dev_crds.yaml").read_text()))
FTJ = ("tuneloop.dev/v1alpha1", "FineTuneJob")
NAME = "acme-tickets"


def finetunejob(namespace: str) -> dict:
    return {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": NAME, "namespace": namespace},
            "spec": {"baseModel": {"name": "smollm2-135m-instruct"}, "dataset": {"uri": "pvc://data/tickets.jsonl"},
                     "queueName": "team-a-gpus"}}


async def tuneloop(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, awaited: the emulator serves it from this event loop."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "tuneloop.cli", *args,
                                                   env={**os.environ, "KUBECONFIG": str(kubeconfig)},
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    return subprocess.CompletedProcess(args, process.returncode, stdout.decode(), stderr.decode())


def emulated(body, tmp_path: Path) -> None:
    async def main():
        async with running_emulator(CRDS, namespaces=("default", "ml-team")) as harness:
            await body(harness, harness.write_kubeconfig(tmp_path / "kubeconfig"))

    asyncio.run(main())


def test_suspend_then_resume_patches_spec_suspend_and_says_what_it_did(tmp_path):
    async def body(harness, kubeconfig):
        harness.create(finetunejob("ml-team"))
        harness.patch_status(FTJ, "ml-team", NAME, {"phase": "Training", "stage": "train"})
        before = harness.get(FTJ, "ml-team", NAME)

        suspended = await tuneloop(kubeconfig, "suspend", NAME, "-n", "ml-team")

        assert suspended.returncode == 0, suspended.stderr
        job = harness.get(FTJ, "ml-team", NAME)
        assert job["spec"] == {**before["spec"], "suspend": True}
        assert job["status"] == before["status"]
        assert suspended.stdout.startswith(f"finetunejob.tuneloop.dev/{NAME} suspended (it was Training)")
        assert (f"  same as: kubectl patch ftj {NAME} -n ml-team --type merge -p "
                """'{"spec":{"suspend":true}}'""") in suspended.stdout
        assert f"tuneloop resume {NAME} -n ml-team" in suspended.stdout

        again = await tuneloop(kubeconfig, "suspend", NAME, "-n", "ml-team")
        assert again.returncode == 0 and "is already suspended (spec.suspend is true): nothing changed" in again.stdout
        assert harness.get(FTJ, "ml-team", NAME)["metadata"]["resourceVersion"] == job["metadata"]["resourceVersion"]

        resumed = await tuneloop(kubeconfig, "resume", NAME, "-n", "ml-team")
        assert resumed.returncode == 0, resumed.stderr
        assert harness.get(FTJ, "ml-team", NAME)["spec"]["suspend"] is False
        assert "resumed: the operator launches its stage again" in resumed.stdout
        assert """--type merge -p '{"spec":{"suspend":false}}'""" in resumed.stdout

    emulated(body, tmp_path)


def test_the_namespace_defaults_to_the_kubeconfig_contexts(tmp_path):
    async def body(harness, kubeconfig):
        harness.create(finetunejob("default"))

        suspended = await tuneloop(kubeconfig, "suspend", NAME)

        assert suspended.returncode == 0, suspended.stderr
        assert harness.get(FTJ, "default", NAME)["spec"]["suspend"] is True
        assert f"kubectl patch ftj {NAME} -n default " in suspended.stdout

    emulated(body, tmp_path)


@pytest.mark.parametrize("phase", [None, "Succeeded"])
def test_a_missing_or_finished_job_is_a_one_line_error(tmp_path, phase):
    async def body(harness, kubeconfig):
        if phase:
            harness.create(finetunejob("ml-team"))
            ended = harness.patch_status(FTJ, "ml-team", NAME, {"phase": phase})

        refused = await tuneloop(kubeconfig, "suspend", NAME, "-n", "ml-team")

        assert refused.returncode == 1 and refused.stdout == ""
        expected = (f"error: FineTuneJob ml-team/{NAME} has ended (Succeeded): there is nothing to suspend\n"
                    if phase else f"error: FineTuneJob ml-team/{NAME} does not exist\n")
        assert refused.stderr == expected
        if phase:  # not patched
            assert harness.get(FTJ, "ml-team", NAME)["metadata"]["resourceVersion"] == ended["metadata"]["resourceVersion"]

    emulated(body, tmp_path)
