"""policy/v1 PodDisruptionBudgets for the real API server of tests/kube_apiserver.py.

Kubernetes 1.20 serves PodDisruptionBudgets as policy/v1beta1 only (policy/v1 came in 1.21), and a
CustomResourceDefinition cannot stand in for a built-in group (its group needs a dot). So the
tests serve policy/v1 the way Kubernetes serves any API it does not build in: through the API
aggregation layer. kube-apiserver authenticates and authorises every request (the operator's RBAC
still decides) and then proxies it to this small HTTPS server, which stores the objects in memory.

It answers what the operator does with a PodDisruptionBudget (create, get, merge patch, list)
and advertises no delete and no watch, so the garbage collector and the namespace controller
leave it alone: an owner's deletion does not remove its PodDisruptionBudget here, unlike in a
cluster. There is no eviction API behind it either: nothing here tests what a budget protects.
"""

from __future__ import annotations

import copy
import datetime
import ipaddress
import itertools
import json
import socket
import ssl
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from openai_server import ServerThread

GROUP_VERSION = "policy/v1"
RESOURCE = "poddisruptionbudgets"
SYSTEM_NAMESPACE = "kube-system"
SERVICE = "policy-v1"
VERBS = ["create", "get", "list", "patch", "update"]


def host_address() -> str:
    """An address of this machine that is not loopback (an Endpoints object may not hold one): the
    default route's, else any global IPv4 address an interface has."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("203.0.113.1", 9))  # TEST-NET-3; no packet is sent: this only picks the interface
            return probe.getsockname()[0]
    except OSError:  # no default route
        listed = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True,
                                text=True, check=False).stdout
        addresses = [line.split()[3].split("/")[0] for line in listed.splitlines() if len(line.split()) > 3]
        if not addresses:
            raise RuntimeError("this machine has no non-loopback IPv4 address for the aggregated API's "
                               "Endpoints") from None
        return addresses[0]


def self_signed(folder: Path, address: str) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{SERVICE}.{SYSTEM_NAMESPACE}.svc")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    (folder / "tls.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "tls.crt", folder / "tls.key")
    return context


def status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": message, "reason": reason, "code": code}, status=code)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class PolicyV1Server(ServerThread):
    """The in-memory policy/v1 API; `objects` maps (namespace, name) to the stored PodDisruptionBudget."""

    def __init__(self, folder: Path):
        self.address = host_address()
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._versions = itertools.count(1)
        app = web.Application()
        base = f"/apis/{GROUP_VERSION}"
        app.router.add_get(base, self._discovery)
        app.router.add_get(f"{base}/{RESOURCE}", self._list)
        app.router.add_get(f"{base}/namespaces/{{namespace}}/{RESOURCE}", self._list)
        app.router.add_post(f"{base}/namespaces/{{namespace}}/{RESOURCE}", self._create)
        app.router.add_get(f"{base}/namespaces/{{namespace}}/{RESOURCE}/{{name}}", self._get)
        app.router.add_put(f"{base}/namespaces/{{namespace}}/{RESOURCE}/{{name}}", self._replace)
        app.router.add_patch(f"{base}/namespaces/{{namespace}}/{RESOURCE}/{{name}}", self._patch)
        super().__init__(app, "policy-v1-server", host=self.address, ssl_context=self_signed(folder, self.address))

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION,
                                  "resources": [{"name": RESOURCE, "singularName": "poddisruptionbudget",
                                                 "namespaced": True, "kind": "PodDisruptionBudget", "verbs": VERBS,
                                                 "shortNames": ["pdb"]}]})

    async def _list(self, request: web.Request) -> web.Response:
        namespace = request.match_info.get("namespace")
        if "watch" in request.query:
            return status(405, "MethodNotAllowed", "watch is not served here")
        items = [obj for (ns, _), obj in sorted(self.objects.items()) if namespace in (None, ns)]
        return web.json_response({"kind": "PodDisruptionBudgetList", "apiVersion": GROUP_VERSION,
                                  "metadata": {"resourceVersion": str(next(self._versions))}, "items": items})

    async def _get(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.objects:
            return status(404, "NotFound", f'poddisruptionbudgets.policy "{key[1]}" not found')
        return web.json_response(self.objects[key])

    async def _create(self, request: web.Request) -> web.Response:
        obj = await request.json()
        namespace = request.match_info["namespace"]
        name = obj.get("metadata", {}).get("name", "")
        if not name:
            return status(422, "Invalid", "metadata.name: Required value")
        if (namespace, name) in self.objects:
            return status(409, "AlreadyExists", f'poddisruptionbudgets.policy "{name}" already exists')
        obj["metadata"] = {**obj["metadata"], "namespace": namespace, "uid": str(uuid.uuid4()), "generation": 1,
                           "creationTimestamp": datetime.datetime.now(datetime.timezone.utc).strftime(
                               "%Y-%m-%dT%H:%M:%SZ")}
        return web.json_response(self._store(namespace, name, obj), status=201)

    async def _replace(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.objects:
            return status(404, "NotFound", f'poddisruptionbudgets.policy "{key[1]}" not found')
        obj = await request.json()
        sent = obj.get("metadata", {}).get("resourceVersion")
        if sent and sent != self.objects[key]["metadata"]["resourceVersion"]:
            return status(409, "Conflict", "the object has been modified; please apply your changes to the latest "
                                           "version and try again")
        obj["metadata"] = {**self.objects[key]["metadata"], **{k: v for k, v in obj["metadata"].items()
                                                                if k in ("labels", "annotations", "ownerReferences")}}
        return web.json_response(self._store(*key, obj))

    async def _patch(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.objects:
            return status(404, "NotFound", f'poddisruptionbudgets.policy "{key[1]}" not found')
        if request.content_type != "application/merge-patch+json":
            return status(415, "UnsupportedMediaType", f"{request.content_type} is not served here")
        patched = merge_patch(copy.deepcopy(self.objects[key]), json.loads(await request.text()))
        patched["metadata"] = {**self.objects[key]["metadata"], **{
            k: v for k, v in patched.get("metadata", {}).items() if k in ("labels", "annotations", "ownerReferences")}}
        return web.json_response(self._store(*key, patched))

    def _store(self, namespace: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj.update(apiVersion=GROUP_VERSION, kind="PodDisruptionBudget")
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        if self.objects.get((namespace, name), {}).get("spec") not in (None, obj.get("spec")):
            obj["metadata"]["generation"] += 1
        self.objects[(namespace, name)] = obj
        return obj


@contextmanager
def serving_policy_v1(server: Any) -> Iterator[PolicyV1Server]:
    """Register a PolicyV1Server with `server` (a KubeApiServer started with aggregator routing) as
    the APIService v1.policy, through a selector-less Service and its Endpoints; wait until it is
    Available and served."""
    with tempfile.TemporaryDirectory(prefix="policy-v1-") as folder, PolicyV1Server(Path(folder)) as backend:
        registered = server.apply([
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": SYSTEM_NAMESPACE},
             "spec": {"ports": [{"port": 443, "targetPort": backend.port}]}},
            {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": SERVICE, "namespace": SYSTEM_NAMESPACE},
             "subsets": [{"addresses": [{"ip": backend.address}], "ports": [{"port": backend.port}]}]},
            {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1.policy"},
             "spec": {"group": "policy", "version": "v1", "insecureSkipTLSVerify": True,
                      "groupPriorityMinimum": 17000, "versionPriority": 16,
                      "service": {"name": SERVICE, "namespace": SYSTEM_NAMESPACE, "port": 443}}}])
        try:
            server.wait_for(lambda: any(c["type"] == "Available" and c["status"] == "True" for c in (server.get(
                "/apis/apiregistration.k8s.io/v1/apiservices/v1.policy") or {}).get("status", {}).get("conditions", [])),
                "the aggregated policy/v1 API to be Available")
            server.wait_for(lambda: server.get(f"/apis/{GROUP_VERSION}"), "policy/v1 discovery")
            yield backend
        finally:
            server.delete(registered[2])
