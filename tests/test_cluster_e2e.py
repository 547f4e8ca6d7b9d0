"""The operator against a real Kubernetes cluster: run when KUBECONFIG is set (marker e2e).

    KUBECONFIG=~/.kube/config python -m pytest -m e2e

What it needs: kubectl on PATH and rights to install CRDs and to create a namespace. It starts
`tuneloop operator` as a subprocess watching a fresh namespace, so nothing else in the cluster is
touched; it needs no GPU: it checks what the operator creates, not that training runs. The same
behaviours are tested against the API emulator in test_operator.py on every CI run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# Read at import (collection), before any test points KUBECONFIG at the emulator.
CLUSTER = os.environ.get("KUBECONFIG")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CLUSTER, reason="KUBECONFIG is not set: no real cluster to test against"),
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH"),
]


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    result = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "KUBECONFIG": CLUSTER or ""})
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def get(kind: str, namespace: str, name: str) -> dict | None:
    output = kubectl("get", kind, name, "-n", namespace, "-o", "json", "--ignore-not-found")
    return json.loads(output) if output.strip() else None


def wait_for(predicate, timeout: float = 60, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """CRDs applied, a fresh namespace, and the operator running against it."""
    namespace = f"tuneloop-e2e-{uuid.uuid4().hex[:6]}"
    kubectl("apply", "-f", str(REPO / "crds"))
    kubectl("create", "namespace", namespace)
    config = tmp_path_factory.mktemp("operator") / "config.yaml"
    config.write_text(yaml.safe_dump({"catalog": {"smollm2-135m-instruct": "pvc://models/smollm2-135m-instruct"},
                                      "mlflowTrackingUri": "http://mlflow.invalid:5000"}))
    operator = subprocess.Popen(
        [sys.executable, "-m", "tuneloop.cli", "operator", "--namespace", namespace, "--standalone",
         "--health-port", "0", "--metrics-port", "0", "--log-format", "text"],
        env={**os.environ, "KUBECONFIG": CLUSTER or "", "TUNELOOP_CONFIG": str(config),
             "TUNELOOP_RECONCILE_INTERVAL": "2"})
    try:
        yield namespace
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def apply_example(namespace: str, name: str, **spec_changes) -> None:
    manifest = yaml.safe_load((REPO / "examples" / "cluster" / "finetunejob.yaml").read_text())
    manifest["metadata"] = {"name": name, "namespace": namespace}
    manifest["spec"].update(spec_changes)
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest))


def test_applying_the_example_creates_one_configmap_and_one_cpu_data_check_job(cluster):
    apply_example(cluster, "acme-tickets")
    job = wait_for(lambda: get("job", cluster, "acme-tickets-validate"), what="the data check Job")
    ftj = wait_for(lambda: (f := get("ftj", cluster, "acme-tickets")) and f.get("status", {}).get("phase")
                   in ("Validating", "Training", "Failed") and f, what="phase Validating")
    assert job["metadata"]["ownerReferences"][0]["uid"] == ftj["metadata"]["uid"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]  # no GPU before the data is read
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    configmap = get("configmap", cluster, "acme-tickets-validate")
    assert json.loads(configmap["data"]["workload.json"])["modelPath"] == "/mnt/pvc/models/smollm2-135m-instruct"
    time.sleep(5)  # a few reconcile periods: nothing is created twice
    jobs = json.loads(kubectl("get", "jobs", "-n", cluster, "-o", "json",
                              "-l", "tuneloop.dev/finetunejob=acme-tickets,tuneloop.dev/stage=validate"))["items"]
    assert [j["metadata"]["uid"] for j in jobs] == [job["metadata"]["uid"]]


def test_an_invalid_spec_fails_with_invalid_spec_and_launches_nothing(cluster):
    apply_example(cluster, "unknown-model", baseModel={"name": "llama-70b"})
    ftj = wait_for(lambda: (f := get("ftj", cluster, "unknown-model")) and f.get("status", {}).get("phase") == "Failed"
                   and f, what="phase Failed")
    failed = next(c for c in ftj["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and "llama-70b" in failed["message"]
    assert get("job", cluster, "unknown-model-validate") is None


def test_the_api_server_rejects_what_the_crd_schema_forbids(cluster):
    manifest = yaml.safe_load((REPO / "examples" / "cluster" / "finetunejob.yaml").read_text())
    manifest["metadata"] = {"name": "both-models", "namespace": cluster}
    manifest["spec"]["baseModel"] = {"name": "smollm2-135m-instruct", "uri": "pvc://models/x"}
    result = subprocess.run(["kubectl", "apply", "-f", "-"], input=yaml.safe_dump(manifest), capture_output=True,
                            text=True, env={**os.environ, "KUBECONFIG": CLUSTER or ""})
    assert result.returncode != 0
    assert "give exactly one of name (a catalog entry) or uri (a model folder)" in result.stderr


def test_deleting_a_finetunejob_removes_what_it_owns(cluster):
    apply_example(cluster, "short-lived")
    wait_for(lambda: get("job", cluster, "short-lived-validate"), what="the data check Job")
    kubectl("delete", "ftj", "short-lived", "-n", cluster, "--wait=true")
    wait_for(lambda: get("job", cluster, "short-lived-validate") is None
             and get("configmap", cluster, "short-lived-validate") is None, timeout=120,
             what="the garbage collector to remove the Job and ConfigMap")
