"""ModelDeployment rollouts against a real kube-apiserver and kube-controller-manager, with the
operator logged in as the chart's ServiceAccount (tests/chart_operator.py).

Kubernetes does its part: the Deployment and ReplicaSet controllers make the Pods of each colour
and count the ready ones, the garbage collector removes the Deployments and Services when the
ModelDeployment goes. The tests play the kubelet (a colour's Pods become ready, or never do, for
a version that cannot start) and kube-proxy + vLLM: the scripted OpenAI server of
tests/openai_server.py answers for the adapter version whose Pods a Service selects. policy/v1
PodDisruptionBudgets, which 1.20 does not serve, come through the aggregation layer
(tests/policy_v1_server.py). The module's last test checks the audit log: no 403, nothing pruned.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from chart_operator import SERVICE_ACCOUNT_USER, SYSTEM, Operator
from kube_apiserver import KubeApiServer, running_control_plane
from openai_server import Backend, OpenAIServer
from policy_v1_server import PolicyV1Server, serving_policy_v1
from test_operator_modeldeployment import NAME, adapter_version, chatty_bot, manifest, ready_replicas, ticket_bot
from test_real_apiserver import CRDS, control_plane_or_skip, pruned_fields

pytestmark = pytest.mark.apiserver
MD_API = "/apis/tuneloop.dev/v1alpha1"


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory) -> Iterator[tuple[KubeApiServer, PolicyV1Server]]:
    control_plane_or_skip()
    with running_control_plane(tmp_path_factory.mktemp("control-plane"), crds=CRDS) as server, \
            serving_policy_v1(server) as pdbs:
        server.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM}}])
        yield server, pdbs


class Kubelet:
    """The kubelet and kube-proxy of the tests, in a thread: every Pod of a Deployment whose adapter
    version can start is marked ready; `routes` maps (namespace, Service) to the backend of the
    version its colour runs while that colour has ready Pods (what the OpenAI server answers with)."""

    def __init__(self, server: KubeApiServer, namespace: str, backends: dict[str, Backend],
                 never_ready: frozenset[str] = frozenset()):
        self.server, self.namespace, self.backends, self.never_ready = server, namespace, backends, never_ready
        self.routes: dict[tuple[str, str], Backend] = {}
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubelet", daemon=True)

    def __enter__(self) -> "Kubelet":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def backend_for(self, namespace: str, service: str) -> Backend | None:
        return self.routes.get((namespace, service))

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.1):
                self._start_pods()
                self._route()
        except BaseException as failure:  # reported by check()
            self.failure = failure

    def check(self) -> bool:
        if self.failure is not None:
            raise AssertionError(f"the tests' kubelet failed: {self.failure!r}")
        return True

    def _start_pods(self) -> None:
        for pod in self.server.items(f"/api/v1/namespaces/{self.namespace}/pods"):
            conditions = (pod.get("status") or {}).get("conditions") or []
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
            if ready or pod["metadata"].get("deletionTimestamp") or adapter_version(
                    {"spec": {"template": pod}}) in self.never_ready:
                continue
            container = pod["spec"]["containers"][0]
            self.server.patch_status(f"/api/v1/namespaces/{self.namespace}/pods/{pod['metadata']['name']}", {
                "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                                       "ready": True, "restartCount": 0,
                                       "state": {"running": {"startedAt": "2026-12-02T00:00:00Z"}}}]})

    def _route(self) -> None:
        routes = {}
        for service in self.server.items(f"/api/v1/namespaces/{self.namespace}/services"):
            colour = service["spec"]["selector"]["tuneloop.dev/colour"]
            deployment = self.server.get(f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{NAME}-{colour}")
            if ready_replicas(deployment):
                routes[(self.namespace, service["metadata"]["name"])] = self.backends[adapter_version(deployment)]
        self.routes = routes


class Rollout:
    """One ModelDeployment's world: the operator, the kubelet, the scripted vLLM servers."""

    def __init__(self, server: KubeApiServer, pdbs: PolicyV1Server, namespace: str, tmp_path,
                 backends: dict[str, Backend], never_ready: frozenset[str] = frozenset()):
        self.server, self.pdbs, self.namespace = server, pdbs, namespace
        self.kubelet = Kubelet(server, namespace, backends, never_ready)
        self.vllm = OpenAIServer(backend_for=self.kubelet.backend_for)
        self.tmp_path = tmp_path

    def __enter__(self) -> "Rollout":
        self.kubelet.__enter__()
        self.vllm.__enter__()
        self.operator = Operator(self.server, self.tmp_path, [self.namespace], workloads={
            "serviceUrlTemplate": self.vllm.url + "/{namespace}/{service}", "aliasPollSeconds": 0.5})
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.operator.stop()
        self.vllm.__exit__(None, None, None)
        self.kubelet.__exit__(None, None, None)

    @property
    def path(self) -> str:
        return f"{MD_API}/namespaces/{self.namespace}/modeldeployments/{NAME}"

    def status(self) -> dict[str, Any]:
        return (self.server.get(self.path) or {}).get("status") or {}

    def wait(self, what: str, condition, timeout: float = 60) -> Any:
        return self.server.wait_for(lambda: self.operator.alive() and self.kubelet.check() and condition(), what,
                                    timeout)

    def phase(self, phase: str) -> dict[str, Any]:
        return self.wait(f"phase {phase}", lambda: self.status() if self.status().get("phase") == phase else None)

    def set_version(self, version: str) -> None:
        self.server.client.patch(self.path, json={"spec": {"adapter": {"name": NAME, "version": version}}},
                                 headers={"Content-Type": "application/merge-patch+json"}).raise_for_status()

    def active_colour(self) -> str:
        return self.server.get(f"/api/v1/namespaces/{self.namespace}/services/{NAME}")["spec"]["selector"][
            "tuneloop.dev/colour"]

    def replicas(self, colour: str) -> int | None:
        deployment = self.server.get(f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{NAME}-{colour}")
        return deployment["spec"]["replicas"] if deployment else None

    def budget_colour(self) -> str | None:
        budget = self.pdbs.objects.get((self.namespace, NAME))
        return budget["spec"]["selector"]["matchLabels"]["tuneloop.dev/colour"] if budget else None

    def create(self, version: str) -> dict[str, Any]:
        md = manifest({"name": NAME, "version": version})
        md["metadata"]["namespace"] = self.namespace
        return self.server.apply([md])[0]


def test_a_good_revision_is_promoted_by_the_real_deployment_controller(control_plane, tmp_path):
    server, pdbs = control_plane
    v1, v2 = ticket_bot(), ticket_bot()
    with Rollout(server, pdbs, "team-bluegreen", tmp_path, {"1": v1, "2": v2}) as rollout:
        md = rollout.create("1")
        first = rollout.phase("Healthy")
        assert first["active"]["adapterVersion"] == "1" and rollout.active_colour() == "blue"
        assert rollout.budget_colour() == "blue" and len(v1.requests) >= 6
        blue_pods = server.items("/api/v1/namespaces/team-bluegreen/pods", "tuneloop.dev/colour=blue")
        assert len(blue_pods) == 2, "the ReplicaSet controller made the active colour's Pods"

        rollout.set_version("2")
        switched = rollout.wait("the switch to green",
                                lambda: rollout.status() if rollout.status().get("activeSelector") == "green" else None)
        assert switched["active"]["adapterVersion"] == "2" and rollout.active_colour() == "green"
        assert len(v2.requests) >= 6, "green was analysed through the preview Service before it took traffic"
        rollout.wait("blue scaled down after scaleDownDelaySeconds", lambda: rollout.replicas("blue") == 0)
        done = rollout.phase("Healthy")
        assert [entry["outcome"] for entry in done["history"]] == ["Promoted", "Promoted"]
        assert rollout.budget_colour() == "green"
        rollout.wait("the ReplicaSet controller to remove blue's Pods", lambda: not server.items(
            "/api/v1/namespaces/team-bluegreen/pods", "tuneloop.dev/colour=blue"))

        server.delete(md)
        rollout.wait("the garbage collector to remove the Deployments and Services", lambda: not [
            obj for path in ("/apis/apps/v1/namespaces/team-bluegreen/deployments",
                             "/api/v1/namespaces/team-bluegreen/services")
            for obj in server.items(path) if obj["metadata"]["name"].startswith(NAME)], timeout=120)


def test_a_bad_revision_is_aborted_and_never_takes_traffic(control_plane, tmp_path):
    server, pdbs = control_plane
    v1, bad_v2 = ticket_bot(), chatty_bot()
    with Rollout(server, pdbs, "team-abort", tmp_path, {"1": v1, "2": bad_v2}) as rollout:
        rollout.create("1")
        rollout.phase("Healthy")
        rollout.set_version("2")
        degraded = rollout.phase("Degraded")
        assert "pre-promotion analysis failed" in degraded["message"] and degraded["abort"] is True
        assert degraded["active"]["adapterVersion"] == "1" and rollout.active_colour() == "blue"
        assert bad_v2.requests, "the bad revision was analysed through the preview Service"
        rollout.wait("green scaled down after abortScaleDownDelaySeconds", lambda: rollout.replicas("green") == 0)
        assert rollout.replicas("blue") == 2 and rollout.budget_colour() == "blue"


def test_a_preview_whose_pods_never_become_ready_is_aborted(control_plane, tmp_path):
    server, pdbs = control_plane
    with Rollout(server, pdbs, "team-notready", tmp_path, {"1": ticket_bot(), "3": ticket_bot()},
                 never_ready=frozenset({"3"})) as rollout:
        md = manifest({"name": NAME, "version": "1"}, readinessTimeoutSeconds=3)
        md["metadata"]["namespace"] = "team-notready"
        server.apply([md])
        rollout.phase("Healthy")
        rollout.set_version("3")
        degraded = rollout.phase("Degraded")
        assert "was not ready with 1 pods within 3s" in degraded["message"]
        assert rollout.active_colour() == "blue" and rollout.replicas("blue") == 2


def test_the_operator_was_never_refused_and_nothing_it_wrote_was_pruned(control_plane):
    """Over every request the operator made in this module's tests (this test runs last)."""
    server, _ = control_plane
    audit = server.audit_entries(SERVICE_ACCOUNT_USER)
    assert audit, "the audit log recorded nothing the operator did: run the module's other tests with it"
    assert [f"{e['verb']} {e['requestURI']}" for e in audit if e["responseStatus"].get("code") == 403] == []
    assert pruned_fields(audit) == []
    assert {"deployments", "services", "poddisruptionbudgets", "modeldeployments"} <= {
        entry["objectRef"]["resource"] for entry in audit if entry["verb"] in ("create", "patch")}
