"""ModelDeployment rollouts, run for real: the kopf operator against the API emulator.

The tests play the rest of the cluster. `Cluster` is the Deployment controller (pods of an adapter
version become ready shortly after their Deployment changes, or never, for a broken version) and
kube-proxy + vLLM: a request to a Service reaches the scripted OpenAI server of the adapter version
its selected colour runs, or fails like a Service without endpoints. Every test ends by replaying
the recorded history of the active Service and both Deployments: at no moment may the active
Service select a colour without ready pods.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from k8s_emulator import handlers_registry, running_emulator
from openai_server import Backend, OpenAIServer, judge_backend

REPO = Path(__file__).resolve().parents[1]
CRDS = list(yaml.safe_load_all((REPO / "crds" / "tuneloop.dev_crds.yaml").read_text()))
MDEP = ("tuneloop.dev/v1alpha1", "ModelDeployment")
DEPLOYMENT = ("apps/v1", "Deployment")
SERVICE = ("v1", "Service")
PDB = ("policy/v1", "PodDisruptionBudget")
NAME = "acme-tickets"
TICKET = '{"category": "shipping", "action": "investigate", "priority": "P2"}'


def ticket_bot() -> Backend:
    return Backend(default_answer=TICKET)


def chatty_bot() -> Backend:
    """Answers in prose where a JSON record is wanted."""
    return Backend(default_answer="Sure! I have created a ticket for you.")


def manifest(adapter: dict, **blue_green) -> dict:
    strategy = {"previewReplicaCount": 1, "scaleDownDelaySeconds": 1, "abortScaleDownDelaySeconds": 1,
                "readinessTimeoutSeconds": 20,
                "prePromotionAnalysis": {"smokePrompts": [{"prompt": "Kestrel Travel: tracking stopped updating",
                                                           "expect": {"json": True}}],
                                         "requests": 6, "maxP95LatencyMs": 5000, "maxErrorRate": 0.0,
                                         "initialDelaySeconds": 1},
                **blue_green}
    return {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": "default"},
            "spec": {"baseModel": {"name": "smollm2-135m-instruct"}, "adapter": adapter,
                     "serving": {"replicas": 2, "gpus": 1}, "strategy": {"blueGreen": strategy}}}


def adapter_version(deployment: dict) -> str:
    """The MLflow version a colour runs, from its fetch-adapter init container (models:/name/version)."""
    init = deployment["spec"]["template"]["spec"]["initContainers"]
    source = next(c for c in init if c["name"] == "fetch-adapter")["command"][3]
    return source.rsplit("/", 1)[1]


def ready_replicas(deployment: dict | None) -> int:
    if deployment is None:
        return 0
    status = deployment.get("status") or {}
    if status.get("observedGeneration", 0) < deployment["metadata"]["generation"]:
        return 0
    return min(status.get("readyReplicas", 0), status.get("updatedReplicas", 0))


class Cluster:
    """The Deployment controller and kube-proxy of the tests (see the module docstring). The OpenAI
    server runs in a thread of its own: it reads `routes`, which run() rewrites from the emulator."""

    def __init__(self, harness, backends: dict[str, Backend], never_ready: frozenset[str] = frozenset(),
                 ready_after: float = 0.3):
        self.harness, self.backends, self.never_ready, self.ready_after = harness, backends, never_ready, ready_after
        self.changed: dict[tuple[str, int], float] = {}
        self.routes: dict[tuple[str, str], Backend] = {("judge", "judge"): backends.get("judge")}

    def backend_for(self, namespace: str, service: str) -> Backend | None:
        return self.routes.get((namespace, service))

    def route(self) -> None:
        routes = {("judge", "judge"): self.backends.get("judge")}
        for svc in self.harness.list_objects(SERVICE, "default"):
            colour = svc["spec"]["selector"]["tuneloop.dev/colour"]
            deployment = self.harness.get(DEPLOYMENT, "default", f"{NAME}-{colour}")
            if ready_replicas(deployment):
                routes[("default", svc["metadata"]["name"])] = self.backends[adapter_version(deployment)]
        self.routes = routes

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.route()
            for deployment in self.harness.list_objects(DEPLOYMENT, "default"):
                meta, replicas = deployment["metadata"], deployment["spec"]["replicas"]
                first_seen = self.changed.setdefault((meta["name"], meta["generation"]), loop.time())
                if loop.time() - first_seen < self.ready_after and replicas:
                    continue
                ready = 0 if adapter_version(deployment) in self.never_ready else replicas
                desired = {"observedGeneration": meta["generation"], "replicas": replicas,
                           "updatedReplicas": replicas, "readyReplicas": ready, "availableReplicas": ready}
                if {k: (deployment.get("status") or {}).get(k, 0) for k in desired} != desired:
                    self.harness.patch_status(DEPLOYMENT, "default", meta["name"], desired)
            self.route()
            await asyncio.sleep(0.02)


def assert_active_service_always_had_ready_pods(harness) -> int:
    """Replay the active Service's and both Deployments' histories in resourceVersion order; returns the
    number of Service versions checked."""
    def versions(ref, name):
        return [(int(v["metadata"]["resourceVersion"]), name, v) for v in harness.history(ref, "default", name) if v]
    timeline = sorted(versions(SERVICE, NAME) + versions(DEPLOYMENT, f"{NAME}-blue")
                      + versions(DEPLOYMENT, f"{NAME}-green"), key=lambda item: item[0])
    current: dict[str, dict] = {}
    checked = 0
    for resource_version, name, obj in timeline:
        current[name] = obj
        if NAME in current:
            colour = current[NAME]["spec"]["selector"]["tuneloop.dev/colour"]
            assert ready_replicas(current.get(f"{NAME}-{colour}")) > 0, (
                f"at resourceVersion {resource_version} the active Service selects {colour}, which has no ready pods")
            checked += name == NAME
    return checked


@pytest.fixture
def operator_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELOOP_RECONCILE_INTERVAL", "0.3")
    return tmp_path


def write_config(tmp_path: Path, server: OpenAIServer, **extra) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "catalog": {"smollm2-135m-instruct": "pvc://models/smollm2-135m-instruct"},
        "mlflowTrackingUri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "serviceUrlTemplate": server.url + "/{namespace}/{service}", "aliasPollSeconds": 0.2,
        "allowedUrls": [server.url + "/judge"], **extra}))  # the judges the scenarios name
    os.environ["TUNELOOP_CONFIG"] = str(config)


class Scenario:
    """An emulator, the scripted OpenAI server, the played cluster, and the operator (restartable)."""

    def __init__(self, harness, server: OpenAIServer, cluster: Cluster, tmp_path: Path):
        self.harness, self.server, self.cluster, self.tmp_path = harness, server, cluster, tmp_path

    def md(self) -> dict:
        return self.harness.get(MDEP, "default", NAME)

    def status(self) -> dict:
        return (self.md() or {}).get("status") or {}

    async def until(self, predicate, timeout: float = 20.0):
        return await self.harness.wait_for(predicate, timeout=timeout, interval=0.05)

    async def phase(self, phase: str, timeout: float = 20.0) -> dict:
        try:
            return await self.until(lambda: self.status() if self.status().get("phase") == phase else None, timeout)
        except TimeoutError:
            raise AssertionError(f"not {phase} within {timeout}s; status: {json.dumps(self.status(), indent=1)}")

    def active_colour(self) -> str | None:
        svc = self.harness.get(SERVICE, "default", NAME)
        return svc["spec"]["selector"]["tuneloop.dev/colour"] if svc else None

    def replicas(self, colour: str) -> int | None:
        deployment = self.harness.get(DEPLOYMENT, "default", f"{NAME}-{colour}")
        return deployment["spec"]["replicas"] if deployment else None

    def set_adapter(self, adapter: dict) -> None:
        self.harness.patch(MDEP, "default", NAME, {"spec": {"adapter": adapter}})

    def event_precedes(self, reason: str, phase: str) -> None:
        self.harness.assert_event_precedes(MDEP, "default", NAME, reason, phase)


async def play(tmp_path, backends, body, *, never_ready=frozenset(), config=None, restarts=()):
    """Run body(scenario) with the operator running; at each (awaitable) in restarts the operator is stopped
    and a fresh one started (the handlers module reloaded: in-memory state is gone, as in a new pod)."""
    async with running_emulator(CRDS) as harness:
        cluster = Cluster(harness, backends, never_ready)
        server = OpenAIServer(backend_for=cluster.backend_for).__enter__()
        write_config(tmp_path, server, **(config or {}))
        os.environ["KUBECONFIG"] = str(harness.write_kubeconfig(tmp_path / "kubeconfig"))
        controller = asyncio.create_task(cluster.run())
        scenario = Scenario(harness, server, cluster, tmp_path)
        try:
            await body(scenario, lambda: harness.kopf_operator(handlers_registry("tuneloop.handlers")))
        finally:
            controller.cancel()
            server.__exit__(None, None, None)
            del os.environ["KUBECONFIG"], os.environ["TUNELOOP_CONFIG"]
        assert_active_service_always_had_ready_pods(harness)


def run(coroutine) -> None:
    asyncio.run(coroutine)


async def tuneloop(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, awaited: the emulator serves it from this event loop."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "tuneloop.cli", *args,
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    return subprocess.CompletedProcess(args, process.returncode, stdout.decode(), stderr.decode())


# --- the tests ---------------------------------------------------------------------------------------

def test_a_good_revision_takes_the_traffic_and_the_old_colour_is_scaled_down_after_the_delay(operator_env):
    v1, v2 = ticket_bot(), ticket_bot()
    async def body(s: Scenario, operator):
        async with operator():
            s.harness.create(manifest({"name": NAME, "version": "1"}))
            first = await s.phase("Healthy")
            assert s.active_colour() == "blue" and first["active"]["adapterVersion"] == "1"
            assert s.replicas("blue") == 2 and s.harness.get(PDB, "default", NAME)["spec"]["selector"][
                "matchLabels"]["tuneloop.dev/colour"] == "blue"
            assert len(v1.requests) >= 6  # the first revision is analysed too

            s.set_adapter({"name": NAME, "version": "2"})
            # The Service is switched during the pass and the status written at its end: wait for the status.
            switched = await s.until(lambda: s.status() if s.status().get("activeSelector") == "green" else None)
            assert switched["active"]["adapterVersion"] == "2" and s.active_colour() == "green"
            assert len(v2.requests) >= 6, "green was analysed through the preview Service first"
            assert s.replicas("blue") == 2, "the old colour keeps running for scaleDownDelaySeconds"
            await s.until(lambda: s.replicas("blue") == 0, timeout=10)
            done = await s.phase("Healthy")
            assert [r["outcome"] for r in done["history"]] == ["Promoted", "Promoted"]
            assert s.harness.get(SERVICE, "default", f"{NAME}-preview")["spec"]["selector"][
                "tuneloop.dev/colour"] == "green", "with no rollout the preview Service follows the active colour"
            s.event_precedes("Promoted", "Healthy")

    run(play(operator_env, {"1": v1, "2": v2}, body))


RESYNC = 60.0


def rollout_timeline(s: Scenario, adapter_version: str) -> list[tuple[str, datetime]]:
    """The steps the rollout of `adapter_version` went through, each with the time the pass that entered it
    stamped (rollout.since), then ("Promoted", its history time): read from every status version stored."""
    from tuneloop.api.common import parse_time

    steps: list[tuple[str, datetime]] = []
    for version in s.harness.history(MDEP, "default", NAME):
        status = (version or {}).get("status") or {}
        rollout, preview = status.get("rollout"), status.get("preview") or {}
        if rollout and preview.get("adapterVersion") == adapter_version and (
                not steps or steps[-1][0] != rollout["step"]):
            steps.append((rollout["step"], parse_time(rollout["since"])))
    promoted = [r for r in s.status()["history"] if r["adapterVersion"] == adapter_version and r["outcome"] == "Promoted"]
    assert promoted, f"version {adapter_version} was not promoted: {json.dumps(s.status(), indent=1)}"
    return [*steps, ("Promoted", parse_time(promoted[-1]["time"]))]


def assert_each_step_came_when_asked(timeline: list[tuple[str, datetime]], asked: dict[str, float]) -> None:
    """Each step lasted at least what its pass asked for (requeue_after) and ended before a resync would
    have come. Times are the passes' own stamps (whole seconds), so a slow observation (MLflow's cold
    start) or a loaded machine does not move them: only a missed requeue_after would."""
    for (step, since), (following, until) in zip(timeline, timeline[1:]):
        lasted = (until - since).total_seconds()
        assert asked[step] <= lasted < RESYNC, (
            f"{step} lasted {lasted:.0f}s before {following}: asked {asked[step]}s, resync {RESYNC:.0f}s; {timeline}")


def test_passes_come_when_the_rollout_asks_and_when_the_spec_changes_not_at_the_resync(operator_env, monkeypatch):
    """A 60 s resync: the readiness checks and the auto-promotion come at the requeue_after their passes
    asked for, and an edit of the spec wakes the object's daemon at once."""
    monkeypatch.setenv("TUNELOOP_RECONCILE_INTERVAL", str(RESYNC))
    v1, v2 = ticket_bot(), ticket_bot()
    asked = {"Preview": 3, "Paused": 2, "ScalingUp": 3}  # readinessTimeoutSeconds, autoPromotionSeconds
    async def body(s: Scenario, operator):
        async with operator():
            s.harness.create(manifest({"name": NAME, "version": "1"}, prePromotionAnalysis=None,
                                      readinessTimeoutSeconds=3, autoPromotionSeconds=2))
            await s.phase("Healthy", timeout=RESYNC)
            first = rollout_timeline(s, "1")
            assert [step for step, _ in first] == ["Preview", "Paused", "Promoted"]
            assert_each_step_came_when_asked(first, asked)

            edited = datetime.now(timezone.utc)
            s.set_adapter({"name": NAME, "version": "2"})
            switched = await s.until(lambda: s.status() if s.status().get("activeSelector") == "green" else None,
                                     timeout=2 * RESYNC)
            assert switched["active"]["adapterVersion"] == "2"
            second = rollout_timeline(s, "2")
            assert [step for step, _ in second] == ["Preview", "Paused", "ScalingUp", "Promoted"]
            # Woken by the edit: the rollout started after it, and before the resync that the last pass
            # (the promotion of version 1) would otherwise have slept until.
            started, last_pass = second[0][1], first[-1][1]
            assert edited.replace(microsecond=0) <= started
            assert (started - last_pass).total_seconds() < RESYNC, f"version 2 started at {started}, the last " \
                                                                    f"pass was at {last_pass}"
            assert_each_step_came_when_asked(second, asked)

    run(play(operator_env, {"1": v1, "2": v2}, body))


def test_a_bad_revision_never_takes_traffic_and_is_not_retried_in_a_loop(operator_env):
    v1, bad_v2 = ticket_bot(), chatty_bot()
    async def body(s: Scenario, operator):
        async with operator():
            s.harness.create(manifest({"name": NAME, "version": "1"}))
            await s.phase("Healthy")
            s.set_adapter({"name": NAME, "version": "2"})
            degraded = await s.phase("Degraded")
            assert "pre-promotion analysis failed" in degraded["message"] and "blue" in degraded["message"]
            assert degraded["active"]["adapterVersion"] == "1" and degraded["abort"] is True
            assert degraded["history"][-1]["outcome"] == "Failed"
            assert s.active_colour() == "blue" and s.replicas("blue") == 2
            s.event_precedes("AnalysisFailed", "Degraded")
            await s.until(lambda: s.replicas("green") == 0, timeout=10)  # after abortScaleDownDelaySeconds
            analysed = len(bad_v2.requests)
            await asyncio.sleep(1.5)  # several timer passes
            assert len(bad_v2.requests) == analysed, "a failed revision is not analysed again by itself"
            assert s.status()["failedRevision"] == degraded["failedRevision"]

            result = await tuneloop("rollout", "retry", NAME)
            assert result.returncode == 0, result.stderr
            await s.until(lambda: len(bad_v2.requests) > analysed)  # retried: analysed once more
            retried = await s.until(lambda: s.status() if [r["outcome"] for r in s.status()["history"]].count(
                "Failed") == 2 else None)
            assert retried["phase"] == "Degraded" and s.active_colour() == "blue"

    run(play(operator_env, {"1": v1, "2": bad_v2}, body))


def test_a_preview_that_is_not_ready_in_time_is_aborted(operator_env):
    v1, v2 = ticket_bot(), ticket_bot()
    async def body(s: Scenario, operator):
        async with operator():
            s.harness.create(manifest({"name": NAME, "version": "1"}, readinessTimeoutSeconds=2))
            await s.phase("Healthy")
            s.set_adapter({"name": NAME, "version": "3"})
            degraded = await s.phase("Degraded")
            assert "was not ready with 1 pods within 2s" in degraded["message"]
            assert s.active_colour() == "blue" and s.replicas("blue") == 2
            s.event_precedes("ReadinessTimeout", "Degraded")
            assert len(v1.requests) >= 6

    run(play(operator_env, {"1": v1, "3": v2}, body, never_ready=frozenset({"3"})))


def register_versions(tracking_uri: str, count: int):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    client.create_registered_model(NAME)
    for _ in range(count):
        client.create_model_version(NAME, source="s3://adapters/acme-tickets")
    return client


def test_moving_the_champion_alias_rolls_the_new_version_out(operator_env):
    v1, v2 = ticket_bot(), ticket_bot()
    async def body(s: Scenario, operator):
        client = register_versions(f"sqlite:///{s.tmp_path / 'mlflow.db'}", 2)
        async with operator():
            s.harness.create(manifest({"name": NAME, "alias": "champion"}))
            pending = await s.phase("Pending")
            assert "waiting for MLflow to resolve acme-tickets@champion" in pending["message"]
            client.set_registered_model_alias(NAME, "champion", "1")
            await s.until(lambda: (s.status().get("active") or {}).get("adapterVersion") == "1")
            client.set_registered_model_alias(NAME, "champion", "2")
            await s.until(lambda: (s.status().get("active") or {}).get("adapterVersion") == "2")
            assert s.active_colour() == "green"
            assert s.status()["history"][-1]["outcome"] == "Promoted"

    run(play(operator_env, {"1": v1, "2": v2}, body))


def test_a_dora_adapter_is_refused_by_name_and_the_serving_version_keeps_serving(operator_env):
    v1, v2 = ticket_bot(), ticket_bot()
    async def body(s: Scenario, operator):
        client = register_versions(f"sqlite:///{s.tmp_path / 'mlflow.db'}", 2)
        client.set_model_version_tag(NAME, "2", "tuneloop.dev/lora", '{"r":8,"useDora":true,"useRslora":false}')
        client.set_registered_model_alias(NAME, "champion", "1")
        async with operator():
            s.harness.create(manifest({"name": NAME, "alias": "champion"}))
            await s.until(lambda: s.status() if (s.status().get("active") or {}).get("adapterVersion") == "1"
                          else None)
            client.set_registered_model_alias(NAME, "champion", "2")
            degraded = await s.phase("Degraded")
            assert "adapter acme-tickets version 2 cannot be served: it was trained with DoRA" in degraded["message"]
            s.event_precedes("InvalidSpec", "Degraded")
            assert s.active_colour() == "blue" and degraded["active"]["adapterVersion"] == "1"
            assert v2.requests == [] and s.replicas("green") in (None, 0), "nothing tried to load version 2"

    run(play(operator_env, {"1": v1, "2": v2}, body))


def test_a_restarted_operator_resumes_a_paused_rollout_and_promotes_on_request(operator_env):
    v1, v2 = ticket_bot(), ticket_bot()
    async def body(s: Scenario, operator):
        async with operator():
            s.harness.create(manifest({"name": NAME, "version": "1"}, autoPromotionEnabled=False))
            paused = await s.phase("Paused")
            assert "tuneloop rollout promote acme-tickets" in paused["message"]
            assert s.harness.get(SERVICE, "default", NAME) is None, "nothing takes traffic before the promotion"
        async with operator():  # a new operator process: nothing in memory
            await asyncio.sleep(1.0)
            assert s.status()["phase"] == "Paused" and s.harness.get(SERVICE, "default", NAME) is None
            result = await tuneloop("rollout", "promote", NAME)
            assert result.returncode == 0, result.stderr
            await s.phase("Healthy")
            assert s.active_colour() == "blue"
            assert "tuneloop.dev/promote" not in (s.md()["metadata"].get("annotations") or {})

            s.set_adapter({"name": NAME, "version": "2"})
            await s.phase("Paused")
        async with operator():  # and once more, in the middle of the second rollout
            result = await tuneloop("rollout", "abort", NAME)
            assert result.returncode == 0, result.stderr
            aborted = await s.phase("Aborted")
            assert aborted["history"][-1]["outcome"] == "Aborted" and s.active_colour() == "blue"
            status = await tuneloop("rollout", "status", NAME)
            assert "Phase:    Aborted (aborted)" in status.stdout and "Aborted" in status.stdout.splitlines()[-1]
        assert len(s.harness.list_objects(DEPLOYMENT, "default")) == 2

    run(play(operator_env, {"1": v1, "2": v2}, body))


def test_a_failed_post_promotion_analysis_switches_back(operator_env):
    v1, bad_v2 = ticket_bot(), chatty_bot()
    async def body(s: Scenario, operator):
        async with operator():
            post = {"smokePrompts": [{"prompt": "Kestrel Travel", "expect": {"json": True}}], "requests": 3,
                    "initialDelaySeconds": 1}
            s.harness.create(manifest({"name": NAME, "version": "1"}, postPromotionAnalysis=post,
                                      prePromotionAnalysis=None))
            await s.phase("Healthy")
            s.set_adapter({"name": NAME, "version": "2"})
            degraded = await s.phase("Degraded")
            assert "post-promotion analysis failed" in degraded["message"]
            assert degraded["history"][-1]["outcome"] == "RolledBack"
            assert s.active_colour() == "blue" and degraded["activeSelector"] == "blue"
            assert len(bad_v2.requests) >= 3

    run(play(operator_env, {"1": v1, "2": bad_v2}, body))


def judged_analysis(judge_url: str) -> dict:
    judge = {"url": judge_url, "model": "judge", "apiKeySecret": {"name": "judge-key", "key": "token"}}
    return {"smokePrompts": [{"prompt": "Kestrel Travel", "expect": {"json": True}, "reference": TICKET}],
            "requests": 2, "minJudgeScore": 7, "judge": judge, "initialDelaySeconds": 1}


JUDGE_KEY = {"apiVersion": "v1", "kind": "Secret", "metadata": {
    "name": "judge-key", "labels": {"tuneloop.dev/secret-usage": "judge"}},
    "data": {"token": base64.b64encode(b"s3cret").decode()}}


def test_the_judge_key_comes_from_a_secret_and_a_missing_secret_fails_the_analysis(operator_env):
    v1 = ticket_bot()
    judge_bot = judge_backend(9)
    async def body(s: Scenario, operator):
        analysis = judged_analysis(s.server.url + "/judge/judge/v1")
        async with operator():
            s.harness.create(manifest({"name": NAME, "version": "1"}, prePromotionAnalysis=analysis))
            degraded = await s.phase("Degraded")
            assert "Secret default/judge-key does not exist" in degraded["message"]
            s.harness.create(JUDGE_KEY)
            await tuneloop("rollout", "retry", NAME)
            healthy = await s.phase("Healthy")
            assert healthy["active"]["score"] == 9
            assert judge_bot.authorizations == {"Bearer s3cret"}

    run(play(operator_env, {"1": v1, "judge": judge_bot}, body))


def test_a_judge_outside_the_allowed_urls_gets_neither_a_request_nor_the_key(operator_env):
    v1, judge_bot = ticket_bot(), judge_backend(9)

    async def body(s: Scenario, operator):
        s.harness.create(JUDGE_KEY)
        # allowedUrls holds .../judge: /judgement is another path, not under it
        analysis = judged_analysis(s.server.url + "/judgement/judge/v1")
        async with operator():
            s.harness.create(manifest({"name": NAME, "version": "1"}, prePromotionAnalysis=analysis))
            degraded = await s.phase("Degraded")
            assert "judge.url: " in degraded["message"] and "is neither a Service of namespace default" in \
                degraded["message"]
            assert judge_bot.authorizations == set()

    run(play(operator_env, {"1": v1, "judge": judge_bot}, body))


def test_a_model_missing_from_the_catalog_is_reported_and_nothing_is_created(operator_env):
    async def body(s: Scenario, operator):
        async with operator():
            md = manifest({"name": NAME, "version": "1"})
            md["spec"]["baseModel"] = {"name": "llama-3.1-8b"}
            s.harness.create(md)
            degraded = await s.phase("Degraded")
            assert "'llama-3.1-8b' is not in the cluster's model catalog" in degraded["message"]
            s.event_precedes("InvalidSpec", "Degraded")
            assert s.harness.list_objects(DEPLOYMENT, "default") == []
            missing = await tuneloop("rollout", "status", "no-such-deployment")
            assert missing.returncode == 1 and "default/no-such-deployment does not exist" in missing.stderr
            status = await tuneloop("rollout", "status", NAME)
            assert "Phase:    Degraded" in status.stdout and "SpecValid=False" in status.stdout

    run(play(operator_env, {}, body))


def test_an_operator_stopped_mid_analysis_runs_the_analysis_again_and_promotes(operator_env):
    v1, v2 = ticket_bot(), Backend(default_answer=TICKET, latency=0.3)

    async def body(s: Scenario, operator):
        async with operator():
            md = manifest({"name": NAME, "version": "1"})
            md["spec"]["strategy"]["blueGreen"]["prePromotionAnalysis"]["concurrency"] = 1
            s.harness.create(md)
            await s.phase("Healthy")
            s.set_adapter({"name": NAME, "version": "2"})
            # the analysis is under way (6 requests, 0.3 s each) and the status that started it is written
            await s.until(lambda: len(v2.requests) >= 2 and (s.status().get("rollout") or {}).get("step") == "Analysis")
        assert s.active_colour() == "blue"
        interrupted = len(v2.requests)
        await asyncio.sleep(1.0)
        assert len(v2.requests) == interrupted < 6, "a stopped operator's analysis stops with it"
        async with operator():
            promoted = await s.until(lambda: s.status() if s.status().get("activeSelector") == "green" else None)
            assert len(v2.requests) >= interrupted + 6, "the lost analysis ran again in full"
            assert promoted["history"][-1]["outcome"] == "Promoted" and s.active_colour() == "green"

    run(play(operator_env, {"1": v1, "2": v2}, body))
