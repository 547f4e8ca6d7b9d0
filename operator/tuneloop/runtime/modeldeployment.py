"""The ModelDeployment runtime on a cluster: observe() what the cluster shows, act() on a pass's decision.

observe(): the followed alias's version (registry.aliases), each colour's Deployment (ready pods of
its current revision only), the latest analysis result. act(): Deployments created, replaced or
scaled; the active and preview Services and the PodDisruptionBudget pointed at a colour;
analyses started; the promote/abort/retry annotations cleared once acted on. Every action is
idempotent: a pass repeated after a crash changes nothing twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tuneloop.api.modeldeployment import (
    COLOURS,
    KIND,
    AnalysisSpec,
    Colour,
    ModelDeployment,
    ModelDeploymentStatus,
    unservable_adapter,
)
from tuneloop.api.common import API_VERSION
from tuneloop.config import OperatorConfig
from tuneloop.reconcile.core import EmitEvent
from tuneloop.reconcile.modeldeployment import (
    Action,
    AnalysisResult,
    ApplyDeployment,
    ClearAnnotation,
    Decision,
    DeploymentState,
    Observed,
    Resource,
    RunAnalysis,
    ScaleDeployment,
    SetPreview,
    SwitchActive,
    Target,
    target_for,
)
from tuneloop.runtime.analysis import analyse
from tuneloop.runtime.analysis_runs import AnalysisRuns
from tuneloop.runtime.kube_client import KubeClient
from tuneloop.storage_uris import UnsupportedStorage
from tuneloop.registry.aliases import AliasResolver
from tuneloop.outbound import address_problem
from tuneloop.runtime.secrets import secret_value
from tuneloop.runtime.serving_manifests import (
    REVISION_LABEL,
    active_service,
    base_model_uri,
    deployment,
    deployment_name,
    disruption_budget,
    preview_service,
)

log = logging.getLogger("tuneloop.serving")
DEPLOYMENT = ("apps/v1", "Deployment")


def deployment_state(obj: dict[str, Any]) -> DeploymentState:
    """Ready pods count only once the Deployment controller has seen the current spec: right after a
    change of revision, status.readyReplicas still counts the old pods."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    revision = (((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}).get(REVISION_LABEL, "")
    caught_up = status.get("observedGeneration", 0) >= obj["metadata"].get("generation", 1)
    ready = min(status.get("readyReplicas", 0), status.get("updatedReplicas", 0)) if caught_up else 0
    return DeploymentState(replicas=spec.get("replicas", 1), ready_replicas=ready, revision=revision)


class CannotRender(RuntimeError):
    """A Deployment of an older revision is gone and the spec now describes another one."""


@dataclass
class ModelDeploymentRuntime:
    client: KubeClient
    config: OperatorConfig
    aliases: AliasResolver
    analyses: AnalysisRuns = field(default_factory=AnalysisRuns)

    # --- observing ---------------------------------------------------------------------------------
    async def observe(self, resource: Resource, now: datetime) -> Observed:
        md = resource.object
        if md is None:
            return Observed()
        namespace, name = md.metadata.namespace, md.metadata.name
        adapter, resolved, problem = md.spec.adapter, None, None
        if adapter.alias is not None and adapter.name is not None:
            resolved = await self.aliases.resolve(adapter.name, adapter.alias)
            problem = self.aliases.problem(adapter.name, adapter.alias)
        target = target_for(md.spec, resolved)
        try:  # what cannot be rendered is a spec problem, said in the status, not a crash on every pass
            base_model_uri(md, self.config)
            if target is not None:
                deployment(md, "blue", target, 1, self.config)
            spec_problem = None
        except UnsupportedStorage as error:
            spec_problem = str(error)
        version = adapter.version or resolved
        if spec_problem is None and adapter.name is not None and version is not None:
            options = await self.aliases.adapter_options(adapter.name, version)
            spec_problem = unservable_adapter(md.spec, version, options)
        deployments: dict[Colour, DeploymentState] = {}
        for colour in COLOURS:
            obj = await self.client.get(*DEPLOYMENT, namespace, deployment_name(name, colour))
            if obj is not None:
                deployments[colour] = deployment_state(obj)
        return Observed(resolved_version=resolved, resolve_problem=problem, spec_problem=spec_problem,
                        deployments=deployments, analysis=self.analyses.result((namespace, name)))

    # --- acting ------------------------------------------------------------------------------------
    async def act(self, resource: Resource, observed: Observed, decision: Decision) -> list[EmitEvent]:
        """Every action in order but the annotations (see finish); a Deployment that cannot be rendered
        any more is reported, not raised."""
        md, problems = resource.object, []
        target = target_for(md.spec, observed.resolved_version) if md is not None else None
        for action in decision.actions:
            if md is not None and not isinstance(action, ClearAnnotation):
                try:
                    await self.carry_out(md, target, decision.status, action)
                except CannotRender as error:
                    problems.append(EmitEvent("Warning", "CannotRender", str(error)))
        return problems

    async def finish(self, resource: Resource, decision: Decision) -> None:
        """After the status is written: an annotation acted on goes only once its effect is stored."""
        cleared = {action.key: None for action in decision.actions if isinstance(action, ClearAnnotation)}
        if cleared:
            await self.client.patch(API_VERSION, KIND, resource.namespace, resource.name,
                                    {"metadata": {"annotations": cleared}})

    async def carry_out(self, md: ModelDeployment, target: Target | None, status: ModelDeploymentStatus,
                        action: Action) -> None:
        if isinstance(action, ApplyDeployment):
            await self.apply_deployment(md, target, action)
        elif isinstance(action, ScaleDeployment):
            if action.after_seconds <= 0:
                await self.scale(md, action.colour, action.replicas)
        elif isinstance(action, SwitchActive):
            await self.point(active_service(md, action.colour))
            await self.point(disruption_budget(md, action.colour))
        elif isinstance(action, SetPreview):
            colour = action.colour or status.active_selector
            if colour is not None:
                await self.point(preview_service(md, colour))
        elif isinstance(action, RunAnalysis):
            self.start_analysis(md, action)
        else:
            raise TypeError(f"not a runtime action: {action!r}")

    async def apply_deployment(self, md: ModelDeployment, target: Target | None, action: ApplyDeployment) -> None:
        namespace, name = md.metadata.namespace, deployment_name(md.metadata.name, action.colour)
        existing = await self.client.get(*DEPLOYMENT, namespace, name)
        if existing is not None and deployment_state(existing).revision == action.revision:
            if (existing.get("spec") or {}).get("replicas") != action.replicas:
                await self.client.patch(*DEPLOYMENT, namespace, name, {"spec": {"replicas": action.replicas}})
            return
        if target is None or target.revision != action.revision:
            raise CannotRender(f"Deployment {name} should run revision {action.revision}, which the spec no longer "
                               f"describes (it now asks for {target.revision if target else 'an unresolved alias'})")
        desired = deployment(md, action.colour, target, action.replicas, self.config)
        if existing is None:
            await self.client.create_if_absent(desired)
        else:  # an idle colour taking a new revision: the whole pod template changes
            desired["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            await self.client.replace(desired)
        log.info("Deployment %s/%s: revision %s, %d replicas", namespace, name, action.revision, action.replicas)

    async def scale(self, md: ModelDeployment, colour: Colour, replicas: int) -> None:
        namespace, name = md.metadata.namespace, deployment_name(md.metadata.name, colour)
        existing = await self.client.get(*DEPLOYMENT, namespace, name)
        if existing is not None and (existing.get("spec") or {}).get("replicas") != replicas:
            await self.client.patch(*DEPLOYMENT, namespace, name, {"spec": {"replicas": replicas}})
            log.info("Deployment %s/%s scaled to %d", namespace, name, replicas)

    async def point(self, desired: dict[str, Any]) -> None:
        """Create the Service or PodDisruptionBudget, or move its selector to the desired colour."""
        meta = desired["metadata"]
        existing = await self.client.get(desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"])
        if existing is None:
            await self.client.create_if_absent(desired)
        elif (existing.get("spec") or {}).get("selector") != desired["spec"]["selector"]:
            await self.client.patch(desired["apiVersion"], desired["kind"], meta["namespace"], meta["name"],
                                    {"spec": {"selector": desired["spec"]["selector"]}})

    # --- analysis ----------------------------------------------------------------------------------
    def start_analysis(self, md: ModelDeployment, action: RunAnalysis) -> None:
        strategy = md.spec.strategy.blue_green
        spec = strategy.post_promotion_analysis if action.post_promotion else strategy.pre_promotion_analysis
        if spec is None:
            return
        service = (strategy.active_service_name if action.post_promotion else strategy.preview_service_name)(
            md.metadata.name)
        base_url = self.config.service_url_template.format(service=service, namespace=md.metadata.namespace,
                                                           port=md.spec.port)

        async def run() -> AnalysisResult:
            try:
                key = await self.judge_key(md, spec)
            except LookupError as error:
                return AnalysisResult(action.run_id, passed=False, reason=str(error))
            return await analyse(spec, base_url, md.metadata.name, action.run_id, key,
                                 judge_retry=self.config.outbound.judge)

        if self.analyses.start((md.metadata.namespace, md.metadata.name), action.run_id, run):
            log.info("analysis %s of %s/%s started against %s", action.run_id, md.metadata.namespace,
                     md.metadata.name, base_url)

    async def judge_key(self, md: ModelDeployment, spec: AnalysisSpec) -> str | None:
        """The judge's API key from its Secret in the ModelDeployment's namespace; LookupError when the
        judge's address or the Secret may not be used (nothing is sent then)."""
        if spec.judge is None:
            return None
        if problem := address_problem("judge.url", spec.judge.url, md.metadata.namespace, self.config.allowed_urls):
            raise LookupError(problem)
        reference = spec.judge.api_key_secret
        if reference is None:
            return None
        return await secret_value(self.client, self.config, md.metadata.namespace, reference, "judge",
                                  "spec.analysis.judge.apiKeySecret")

    def forget(self, namespace: str, name: str) -> None:
        """A deleted ModelDeployment's analyses stop."""
        self.analyses.forget((namespace, name))
