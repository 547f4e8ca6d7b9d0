"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
(1.20.2, built by tools/build_kube.sh; `make test` builds them once and caches them), on 127.0.0.1.

What is real: token authentication and RBAC authorisation, the structural schema of the CRDs
(pruning, OpenAPI validation), the status subresource, the Job, Deployment and ReplicaSet
controllers that make Pods, and the garbage collector that removes what an owner leaves. There is
no scheduler or kubelet: tests write Pod status themselves, as the kubelet would.

The test client is the admin (group system:masters, a static token); the operator logs in as a
ServiceAccount with a token from the TokenRequest API, so RBAC decides what it may do.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from postgres import free_port

KUBE_VERSION = "1.20.2"
BIN_DIR = Path(os.environ.get("KUBE_BIN_DIR", Path.home() / ".cache" / "tuneloop" / f"kubernetes-{KUBE_VERSION}" / "bin"))
ADMIN_TOKEN = "tuneloop-test-admin-token"
START_SECONDS = 120
# Every request but the admin's (the tests and the controller manager): what was sent, what came back.
AUDIT_POLICY = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
                "rules": [{"level": "None", "users": ["admin"]},
                          {"level": "None", "verbs": ["watch"]},
                          {"level": "RequestResponse"}]}


def missing_binaries() -> list[str]:
    """What tools/build_kube.sh has not put in place yet."""
    missing = [name for name in ("kube-apiserver", "kube-controller-manager") if not (BIN_DIR / name).exists()]
    return missing + (["etcd"] if shutil.which("etcd") is None else [])


def _write_service_account_keys(folder: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = folder / "sa.key", folder / "sa.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def kubeconfig(server: str, ca_file: Path, token: str, namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
            "users": [{"name": "test", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}]}


class KubeApiServer:
    """The control plane's processes and its admin client."""

    def __init__(self, folder: Path, *, audit: bool = True, crds: list[dict[str, Any]] = ()) -> None:
        self.folder, self.audit, self.crds = folder, audit, list(crds)
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca_file = folder / "certs" / "apiserver.crt"
        self.admin_kubeconfig = folder / "admin.kubeconfig"
        self.audit_log = folder / "audit.log"
        # etcd syncs every write to disk; in memory (tmpfs) it answers as on a cluster's fast SSD.
        memory = Path("/dev/shm")
        self.etcd_dir = Path(tempfile.mkdtemp(prefix="tuneloop-etcd-", dir=memory if memory.is_dir() else None))
        self._client: httpx.Client | None = None
        self._resources: dict[tuple[str, str], tuple[str, bool]] = {}

    # --- processes ---------------------------------------------------------------------------

    def start(self) -> None:
        etcd_port, peer_port = free_port(), free_port()
        self._spawn("etcd", [
            "etcd", "--name", "test", "--data-dir", str(self.etcd_dir),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"test=http://127.0.0.1:{peer_port}",
            "--listen-metrics-urls", f"http://127.0.0.1:{free_port()}", "--log-level", "error"])
        private_key, public_key = _write_service_account_keys(self.folder)
        policy = self.folder / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        tokens = self.folder / "tokens.csv"
        tokens.write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')
        self._spawn("kube-apiserver", [
            str(BIN_DIR / "kube-apiserver"), "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
            "--secure-port", str(self.port), "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--insecure-port", "0", "--cert-dir", str(self.ca_file.parent), "--token-auth-file", str(tokens),
            "--authorization-mode", "RBAC", "--service-account-key-file", str(public_key),
            "--service-account-signing-key-file", str(private_key),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-cluster-ip-range", "10.96.0.0/16", "--allow-privileged", "--v", "0",
            # An aggregated API (tests/policy_v1_server.py) is reached through its Service's Endpoints:
            # there is no kube-proxy to route a ClusterIP.
            "--enable-aggregator-routing=true",
            *(["--audit-policy-file", str(policy), "--audit-log-path", str(self.audit_log), "--audit-log-format", "json"]
              if self.audit else [])])
        self._wait_until(lambda: self.ca_file.exists() and self._ready(), "the API server to answer /readyz")
        self.admin_kubeconfig.write_text(yaml.safe_dump(kubeconfig(self.url, self.ca_file, ADMIN_TOKEN)))
        # Served before the garbage collector starts, it watches these kinds at once; a CRD added later
        # joins its watches only at its next discovery pass (every 30 s in 1.20).
        self.apply(self.crds)
        self._spawn("kube-controller-manager", [
            str(BIN_DIR / "kube-controller-manager"), "--kubeconfig", str(self.admin_kubeconfig),
            "--service-account-private-key-file", str(private_key), "--root-ca-file", str(self.ca_file),
            "--leader-elect=false", "--port", "0", "--secure-port", "0", "--controllers", "*",
            "--concurrent-gc-syncs", "5", "--v", "0"])
        self._wait_until(lambda: self.get("/api/v1/namespaces/default/serviceaccounts/default") is not None,
                         "the controller manager to make the default ServiceAccount")

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        for _name, process in reversed(self.processes):
            process.terminate()
        for _name, process in reversed(self.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.etcd_dir, ignore_errors=True)

    def _spawn(self, name: str, command: list[str]) -> None:
        with (self.folder / f"{name}.log").open("wb") as log:
            self.processes.append((name, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)))

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.folder / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _ready(self) -> bool:
        try:
            return self.client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def _wait_until(self, condition: Callable[[], Any], what: str, timeout: float = START_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")
            if condition():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.log_tail('kube-apiserver')}")

    # --- the admin client ----------------------------------------------------------------------

    admin_token = ADMIN_TOKEN

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, verify=self.ssl_context, timeout=30,
                                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        return self._client

    def get(self, path: str) -> dict[str, Any] | None:
        response = self.client.get(path)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def items(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else {}
        response = self.client.get(path, params=params)
        response.raise_for_status()
        return response.json()["items"]

    def patch_status(self, path: str, status: dict[str, Any]) -> dict[str, Any]:
        response = self.client.patch(f"{path}/status", content=json.dumps({"status": status}),
                                     headers={"Content-Type": "application/merge-patch+json"})
        response.raise_for_status()
        return response.json()

    def patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of the main resource, as `kubectl patch --type merge` sends it."""
        response = self.client.patch(path, content=json.dumps(patch),
                                     headers={"Content-Type": "application/merge-patch+json"})
        response.raise_for_status()
        return response.json()

    def path_of(self, obj: dict[str, Any], *, name: bool = True) -> str:
        """The REST path of a manifest's object (or of its collection), found through discovery."""
        api_version, kind = obj["apiVersion"], obj["kind"]
        resource, namespaced = self._resource(api_version, kind)
        prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        namespace = obj.get("metadata", {}).get("namespace") or "default"
        path = f"{prefix}/namespaces/{namespace}/{resource}" if namespaced else f"{prefix}/{resource}"
        return f"{path}/{obj['metadata']['name']}" if name else path

    def _resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        if (api_version, kind) not in self._resources:
            discovery = self.get(f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}") or {}
            for entry in discovery.get("resources", []):
                if "/" not in entry["name"]:
                    self._resources[(api_version, entry["kind"])] = (entry["name"], entry["namespaced"])
        if (api_version, kind) not in self._resources:
            raise LookupError(f"the API server serves no {kind} in {api_version}")
        return self._resources[(api_version, kind)]

    def apply(self, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Create each object, or replace it where it exists; a CRD is waited for until it is served."""
        stored = []
        for obj in objects:
            response = self.client.post(self.path_of(obj, name=False), json=obj)
            if response.status_code == 409:
                current = self.get(self.path_of(obj))
                replacement = {**obj, "metadata": {**obj["metadata"],
                                                   "resourceVersion": current["metadata"]["resourceVersion"]}}
                response = self.client.put(self.path_of(obj), json=replacement)
            if response.is_error:
                raise AssertionError(f"{obj['kind']} {obj['metadata']['name']}: {response.status_code} {response.text}")
            stored.append(response.json())
            if obj["kind"] == "CustomResourceDefinition":
                self.wait_for(lambda: any(c["type"] == "Established" and c["status"] == "True" for c in
                                          (self.get(self.path_of(obj)) or {}).get("status", {}).get("conditions") or []),
                              f"CRD {obj['metadata']['name']} to be established")
                self._resources.clear()
        return stored

    def delete(self, obj: dict[str, Any]) -> None:
        response = self.client.delete(self.path_of(obj), params={"propagationPolicy": "Background"})
        if response.status_code != 404:
            response.raise_for_status()

    def service_account_token(self, namespace: str, name: str) -> str:
        """A token for the ServiceAccount from the TokenRequest API, as a projected volume gets it."""
        response = self.client.post(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                                    json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                          "spec": {"expirationSeconds": 3600}})
        response.raise_for_status()
        return response.json()["status"]["token"]

    def audit_entries(self, user: str) -> list[dict[str, Any]]:
        """The finished requests `user` made, as the audit log recorded them."""
        entries = [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]
        return [entry for entry in entries
                if entry["user"].get("username") == user and entry["stage"] == "ResponseComplete"]

    def wait_for(self, condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if result := condition():
                return result
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextmanager
def running_control_plane(folder: Path, *, audit: bool = True,
                          crds: list[dict[str, Any]] = ()) -> Iterator[KubeApiServer]:
    """`audit`: log every request but the admin's with its bodies (tests); off for benchmarks.
    `crds`: applied before the controller manager starts."""
    folder.mkdir(parents=True, exist_ok=True)
    server = KubeApiServer(folder, audit=audit, crds=crds)
    try:
        server.start()
        yield server
    finally:
        server.stop()
