"""`tuneloop operator` as the Helm chart runs it, against a real API server (tests/kube_apiserver.py):
the chart rendered by a real helm, its ServiceAccount, RBAC, peering object and configuration
applied, and the operator process started with the Deployment's arguments, logged in with a token
of the chart's ServiceAccount. Used by tests/test_real_apiserver.py and benchmarks/operator_scale.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from kube_apiserver import KubeApiServer, kubeconfig
from postgres import free_port

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "tuneloop"
RELEASE, SYSTEM = "tuneloop", "tuneloop-system"
SERVICE_ACCOUNT_USER = f"system:serviceaccount:{SYSTEM}:{RELEASE}"
CHART_KINDS = {"ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ConfigMap",
               "KopfPeering", "ClusterKopfPeering"}


def helm_binary() -> str:
    beside_python = Path(sys.executable).parent / "helm"
    if not beside_python.exists():
        raise FileNotFoundError(f"helm is not installed beside {sys.executable}: run `make setup`")
    return str(beside_python)


def render_chart(watch_namespaces: list[str], mlflow_uri: str, workloads: dict[str, Any],
                 values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    values = {"watchNamespaces": watch_namespaces, "catalog": {"smollm2-135m-instruct": "pvc://models/smollm2"},
              "mlflow": {"trackingUri": mlflow_uri}, "workloads": workloads, **(values or {})}
    result = subprocess.run([helm_binary(), "template", RELEASE, str(CHART), "--namespace", SYSTEM, "--values", "-"],
                            input=yaml.safe_dump(values), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


class Operator:
    """`tuneloop operator` as the chart's Deployment runs it, logged in as the chart's ServiceAccount."""

    def __init__(self, server: KubeApiServer, folder: Path, watch_namespaces: list[str], *,
                 work_namespaces: tuple[str, ...] = (), standalone: bool = False,
                 workloads: dict[str, Any] | None = None, values: dict[str, Any] | None = None,
                 reconcile_interval: float = 0.5,
                 python: tuple[str, ...] = ("-m", "tuneloop.cli")):
        self.server, self.folder = server, folder
        # No MLflow listens there: the FineTuneJob's stages reach MLflow from their pods, not the operator.
        objects = render_chart(watch_namespaces, f"http://127.0.0.1:{free_port()}", workloads or {}, values)
        for namespace in {*watch_namespaces, *work_namespaces}:
            server.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}])
        server.apply([obj for obj in objects if obj["kind"] in CHART_KINDS])
        deployment = next(obj for obj in objects if obj["kind"] == "Deployment" and obj["metadata"]["name"] == f"{RELEASE}-operator")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        config = next(obj for obj in objects if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].endswith("-config"))
        (folder / "config.yaml").write_text(config["data"]["config.yaml"])
        account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        token = server.service_account_token(SYSTEM, account)
        (folder / "kubeconfig").write_text(yaml.safe_dump(kubeconfig(server.url, server.ca_file, token)))
        # The chart's arguments, except the ports: a pod has a network of its own, this process does not.
        self.health_port = free_port()
        ports = {"--health-port": self.health_port, "--metrics-port": free_port()}
        arguments = [f"{a.split('=')[0]}={ports[a.split('=')[0]]}" if a.split("=")[0] in ports else a
                     for a in container["args"]]
        if standalone:
            arguments.append("--standalone")
        env = {**os.environ, "KUBECONFIG": str(folder / "kubeconfig"), "TUNELOOP_CONFIG": str(folder / "config.yaml"),
               "TUNELOOP_RECONCILE_INTERVAL": str(reconcile_interval), "HOME": str(folder)}
        self.log = folder / "operator.log"
        self.command = [sys.executable, *python, *arguments]  # `python`: how to run tuneloop's command line
        self.env = env
        self.start()

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def wait_until_live(self, timeout: float = 60) -> None:
        """Until kopf's liveness endpoint answers: the operator has logged in and started watching."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            try:
                if httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the operator did not answer /healthz within {timeout:.0f}s:\n{self.log.read_text()[-2000:]}")

    def peak_rss_mib(self) -> float:
        """The operator process's peak resident memory (VmHWM), while it runs."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise LookupError("no VmHWM in /proc status")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the operator exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
        return True
