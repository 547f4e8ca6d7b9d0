"""Automatic promotion, the loop with no engineer: a FineTuneJob whose gate passed and which beat
the champion moves MLflow's `champion` alias, and the ModelDeployment that follows it rolls the new
adapter out through its analysis.

The operator runs for real against the emulator; the tests play the Job controller for training
and evaluation (their results are given), but the register Job runs the real register workload
(`tuneloop_evaluator.register`) on the spec the operator wrote into its ConfigMap, against the same
MLflow store the operator reads the alias from.
"""

from __future__ import annotations

import asyncio
import json

import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from stage_results import improvement_test
from test_operator import EXAMPLE, FTJ, RESULT, data_checked, finish_job, job_in_phase
from test_operator_modeldeployment import NAME, Scenario, manifest, play, ticket_bot
from tuneloop.api.workloads import RegisterWorkload, compact_result
from tuneloop_evaluator.register import register

SCORE = {"value": 0.6, "low": 0.43, "high": 0.77}
BEAT_THE_CHAMPION = {
    "succeeded": True, "baseline": "champion", "baselineVersion": "1", "judge": {"configured": False},
    "tests": [improvement_test()], "test": {"examples": 30, "candidate": {"exactMatch": SCORE},
                "baseline": {"exactMatch": {"value": 0.0, "low": 0.0, "high": 0.0}},
                "difference": {"exactMatch": SCORE}}}


def adapter_folder(path):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}), encoding="utf-8")
    save_file({"base_model.model.lora_A.weight": torch.zeros(2, 4)}, str(path / "adapter_model.safetensors"))
    return path


def run_register_workload(harness, adapter) -> dict:
    """Play the register Job's pod: the real workload, on the spec from the operator's ConfigMap."""
    config_map = harness.get(("v1", "ConfigMap"), "default", "acme-tickets-register")
    spec = RegisterWorkload.model_validate_json(config_map["data"]["workload.json"])
    assert spec.set_champion and spec.expected_champion == "1"
    result = register(spec.model_copy(update={"adapter_path": str(adapter), "records_path": None}))
    return json.loads(compact_result(result))  # what the pod leaves in its termination message


def test_a_finetunejob_that_beats_the_champion_reaches_traffic_with_no_engineer(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELOOP_RECONCILE_INTERVAL", "0.3")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    client.create_experiment("tuneloop", artifact_location=(tmp_path / "artifacts").as_uri())
    adapter = adapter_folder(tmp_path / "adapter")
    first = register(RegisterWorkload.model_validate({
        "job": "default/first", "jobUid": "uid-first", "tracking": {"trackingUri": tracking_uri},
        "modelName": NAME, "adapterPath": str(adapter), "setChallenger": True, "setChampion": True}))
    assert first.succeeded and first.version == "1"
    v1, v2 = ticket_bot(), ticket_bot()

    async def body(s: Scenario, operator):
        async with operator():
            s.harness.create(manifest({"name": NAME, "alias": "champion"}))
            serving = await s.phase("Healthy")
            assert serving["active"]["adapterVersion"] == "1" and s.active_colour() == "blue"

            s.harness.create(EXAMPLE)
            finish_job(s.harness, RESULT, await data_checked(s.harness))
            await job_in_phase(s.harness, "Evaluating")
            finish_job(s.harness, BEAT_THE_CHAMPION, "acme-tickets-evaluate")
            await s.until(lambda: s.harness.get(("batch/v1", "Job"), "default", "acme-tickets-register"))
            registered = await asyncio.to_thread(run_register_workload, s.harness, adapter)
            assert registered["version"] == "2" and "champion" in registered["aliases"]
            finish_job(s.harness, registered, "acme-tickets-register")
            done = await job_in_phase(s.harness, "Succeeded")
            assert done["status"]["registry"]["uri"] == f"models:/{NAME}/2"

            await s.until(lambda: (s.status().get("active") or {}).get("adapterVersion") == "2", timeout=30)
            assert s.active_colour() == "green"
            assert len(v2.requests) >= 6, "the new champion was analysed before it took the traffic"
            assert [r["adapterVersion"] for r in s.status()["history"]] == ["1", "2"]
            assert s.harness.get(FTJ, "default", "acme-tickets")["status"]["phase"] == "Succeeded"

    asyncio.run(play(tmp_path, {"1": v1, "2": v2}, body))


def test_the_example_manifests_are_the_ones_this_loop_uses():
    """The README's path uses examples/cluster/*: the ModelDeployment follows the champion of the
    model the FineTuneJob registers."""
    from pathlib import Path
    examples = Path(__file__).resolve().parents[1] / "examples" / "cluster"
    md = yaml.safe_load((examples / "modeldeployment.yaml").read_text())
    assert md["spec"]["adapter"] == {"name": EXAMPLE["spec"]["registry"]["modelName"], "alias": "champion"}
