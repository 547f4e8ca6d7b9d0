"""The pieces of the ModelDeployment runtime that the emulator tests cannot corner: how a Deployment's
readiness is read, the status patch, and the registry of analyses in flight."""

from __future__ import annotations

import asyncio

from tuneloop.api.common import merge_patch_between
from tuneloop.reconcile.modeldeployment import AnalysisResult
from tuneloop.runtime.analysis_runs import AnalysisRuns
from tuneloop.runtime.modeldeployment import deployment_state


def deployment(generation=2, observed=2, ready=2, updated=2, revision="r2", replicas=2):
    return {"metadata": {"name": "bot-blue", "generation": generation},
            "spec": {"replicas": replicas, "template": {"metadata": {"labels": {"tuneloop.dev/revision": revision}}}},
            "status": {"observedGeneration": observed, "readyReplicas": ready, "updatedReplicas": updated}}


def test_ready_pods_count_only_once_the_controller_saw_the_new_revision():
    assert deployment_state(deployment()).ready_replicas == 2
    # just re-templated: readyReplicas still counts the old revision's pods
    assert deployment_state(deployment(generation=3, observed=2)).ready_replicas == 0
    # rolling: 2 pods ready, only 1 of them of the current template
    assert deployment_state(deployment(ready=2, updated=1)).ready_replicas == 1
    state = deployment_state(deployment(revision="r9", replicas=0, ready=0, updated=0))
    assert (state.revision, state.replicas, state.ready_replicas) == ("r9", 0, 0)


def test_the_status_patch_nulls_what_the_pass_cleared_and_leaves_the_rest_alone():
    old = {"phase": "Progressing", "rollout": {"step": "Analysis"}, "active": {"colour": "blue", "score": 8.0},
           "history": [1]}
    new = {"phase": "Healthy", "active": {"colour": "green"}, "history": [1]}
    assert merge_patch_between(old, new) == {"phase": "Healthy", "rollout": None,
                                             "active": {"colour": "green", "score": None}}
    assert merge_patch_between(new, new) == {}


def test_an_analysis_runs_once_per_run_id_and_a_new_run_replaces_the_old():
    async def scenario():
        runs, started = AnalysisRuns(), []

        def analysis(run_id, passed=True, seconds=0.0):
            async def run():
                started.append(run_id)
                await asyncio.sleep(seconds)
                return AnalysisResult(run_id, passed)
            return run

        key = ("default", "bot")
        assert runs.start(key, "pre-a-1", analysis("pre-a-1", seconds=10))
        assert not runs.start(key, "pre-a-1", analysis("pre-a-1"))  # re-emitted by the next pass
        await asyncio.sleep(0)
        assert runs.result(key) is None  # still running
        slow = runs.runs[key].task
        assert runs.start(key, "pre-b-2", analysis("pre-b-2", passed=False))  # a newer revision
        await asyncio.sleep(0.01)
        assert slow.cancelled() and runs.result(key) == AnalysisResult("pre-b-2", False)
        assert started == ["pre-a-1", "pre-b-2"]

        async def crashing():
            raise KeyError("bug")
        runs.start(key, "pre-c-3", crashing)
        await asyncio.sleep(0.01)
        crashed = runs.result(key)
        assert crashed.run_id == "pre-c-3" and not crashed.passed and "crashed" in crashed.reason
        await runs.close()

    asyncio.run(scenario())
