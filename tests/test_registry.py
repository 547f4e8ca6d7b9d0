"""Registration of an adapter in a real MLflow: SQLite in process, and an `mlflow server` through the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from tuneloop.api.export import ExportedFile
from tuneloop.api.workloads import RegisterResult, RegisterWorkload, Tracking
from tuneloop_evaluator.register import JOB_UID_TAG, register

MODEL = "support-tickets"
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"}
MLFLOW_CLI = Path(sys.executable).with_name("mlflow")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A trainer output folder: what must be registered, plus checkpoints and pickles that must not."""
    folder = tmp_path_factory.mktemp("output") / "adapter"
    (folder / "checkpoints" / "step-10").mkdir(parents=True)
    (folder / "checkpoints" / "step-10" / "optimizer.pt").write_bytes(b"junk optimizer state")
    (folder / "adapter_model.bin").write_bytes(b"a pickle, never uploaded")
    (folder / "README.md").write_text("model card\n", encoding="utf-8")
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["v_proj", "q_proj"], "bias": "none",
        "use_dora": False, "use_rslora": True, "modules_to_save": None}), encoding="utf-8")
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}), encoding="utf-8")
    save_file({"base_model.model.lora_A.weight": torch.arange(8, dtype=torch.float32).reshape(2, 4)},
              str(folder / "adapter_model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("evaluation") / "records.jsonl"
    path.write_text(json.dumps({"prompt": "p", "answer": "a", "exactMatch": 1.0}) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def sqlite_uri(tmp_path, monkeypatch) -> str:
    """A fresh SQLite store whose experiment keeps its artifacts under tmp_path (not ./mlruns)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).create_experiment("tuneloop", artifact_location=(tmp_path / "artifacts").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # models:/ downloads look the version up here
    return uri


def workload(tracking_uri: str, adapter: Path, uid: str, **fields) -> RegisterWorkload:
    defaults = dict(
        job=f"team-a/{uid}", job_uid=uid, tracking=Tracking(tracking_uri=tracking_uri), model_name=MODEL,
        adapter_path=str(adapter), tags={"tuneloop.dev/base-model": "tiny-llama", "tuneloop.dev/dataset-sha256": "ab12"},
        metrics={"exactMatch": 0.75, "rougeL": 0.8}, set_challenger=True)
    return RegisterWorkload(**{**defaults, **fields})


# What a server checks before loading the adapter, from the adapter's own adapter_config.json.
LORA = ('{"r":4,"useDora":false,"useRslora":true,"bias":"none","modulesToSave":[],'
        '"targetModules":["q_proj","v_proj"]}')


def artifact_names(client: MlflowClient, run_id: str, path: str) -> set[str]:
    return {Path(item.path).name for item in client.list_artifacts(run_id, path)}


def test_registers_adapter_with_tags_metrics_and_aliases(sqlite_uri, adapter, records, tmp_path):
    result = register(workload(sqlite_uri, adapter, "uid-1", set_champion=True, records_path=str(records)))

    assert result.succeeded, result.message
    assert (result.version, result.uri, result.aliases) == ("1", f"models:/{MODEL}/1", ["challenger", "champion"])
    client = MlflowClient(tracking_uri=sqlite_uri)
    version = client.get_model_version(MODEL, "1")
    assert version.source == f"runs:/{result.run_id}/adapter"
    assert version.tags == {"tuneloop.dev/base-model": "tiny-llama", "tuneloop.dev/dataset-sha256": "ab12",
                            JOB_UID_TAG: "uid-1", "tuneloop.dev/lora": LORA}
    assert artifact_names(client, result.run_id, "adapter") == ADAPTER_FILES
    assert artifact_names(client, result.run_id, "evaluation") == {"records.jsonl"}
    run = client.get_run(result.run_id)
    assert run.data.metrics == {"exactMatch": 0.75, "rougeL": 0.8}
    assert run.info.status == "FINISHED"
    downloaded = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion", dst_path=str(tmp_path / "dl")))
    assert {path.name for path in downloaded.iterdir()} == ADAPTER_FILES
    assert (downloaded / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()


def test_same_job_uid_returns_the_version_it_registered(sqlite_uri, adapter):
    first = register(workload(sqlite_uri, adapter, "uid-1"))
    client = MlflowClient(tracking_uri=sqlite_uri)
    client.delete_model_version_tag(MODEL, "1", "tuneloop.dev/base-model")

    again = register(workload(sqlite_uri, adapter, "uid-1"))

    assert again.succeeded and again.already_registered and not first.already_registered
    assert (again.version, again.run_id, again.aliases) == ("1", first.run_id, ["challenger"])
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1
    assert client.get_model_version(MODEL, "1").tags["tuneloop.dev/base-model"] == "tiny-llama"


def test_champion_moves_only_from_the_version_the_candidate_beat(sqlite_uri, adapter):
    register(workload(sqlite_uri, adapter, "uid-1", set_champion=True))
    second = register(workload(sqlite_uri, adapter, "uid-2", set_champion=True, expected_champion="1"))
    stale = register(workload(sqlite_uri, adapter, "uid-3", set_champion=True, expected_champion="1"))

    client = MlflowClient(tracking_uri=sqlite_uri)
    assert (second.version, second.aliases) == ("2", ["challenger", "champion"])
    assert stale.succeeded and (stale.version, stale.aliases) == ("3", ["challenger"])
    assert "champion not moved" in stale.message and "evaluated against version 1" in stale.message
    assert "now version 2" in stale.message
    late_retry = register(workload(sqlite_uri, adapter, "uid-2", set_champion=True, expected_champion="1"))
    assert late_retry.already_registered and "challenger stays on the newer version 3" in late_retry.message
    aliases = client.get_registered_model(MODEL).aliases  # versions are int from SQLite, str over REST
    assert {alias: str(version) for alias, version in aliases.items()} == {"champion": "2", "challenger": "3"}
    assert client.get_model_version(MODEL, "1").tags[JOB_UID_TAG] == "uid-1"


def test_expected_no_champion_does_not_replace_one(sqlite_uri, adapter):
    register(workload(sqlite_uri, adapter, "uid-1", set_champion=True))
    late = register(workload(sqlite_uri, adapter, "uid-2", set_champion=True, expected_champion=None))

    assert late.succeeded and late.aliases == ["challenger"]
    assert "evaluated against no champion, but the champion is now version 1" in late.message


def test_adapter_joins_the_training_run(sqlite_uri, adapter):
    client = MlflowClient(tracking_uri=sqlite_uri)
    training = client.create_run(client.get_experiment_by_name("tuneloop").experiment_id, run_name="train")
    client.set_terminated(training.info.run_id)

    result = register(workload(sqlite_uri, adapter, "uid-1", training_run_id=training.info.run_id))

    assert result.run_id == training.info.run_id
    assert artifact_names(client, training.info.run_id, "adapter") == ADAPTER_FILES
    assert client.get_run(training.info.run_id).data.metrics["exactMatch"] == 0.75


def test_a_run_left_by_a_crashed_attempt_is_reused(sqlite_uri, adapter):
    client = MlflowClient(tracking_uri=sqlite_uri)
    experiment = client.get_experiment_by_name("tuneloop").experiment_id
    earlier = client.create_run(experiment, tags={JOB_UID_TAG: "uid-1"})

    result = register(workload(sqlite_uri, adapter, "uid-1", training_run_id="0" * 32))

    assert result.succeeded and result.run_id == earlier.info.run_id
    assert client.get_run(earlier.info.run_id).info.status == "FINISHED"
    assert len(client.search_runs([experiment])) == 1


def test_the_cost_goes_on_the_training_run_as_metrics_and_on_the_version_as_tag_and_description(sqlite_uri,
                                                                                                adapter):
    from test_report import COST_SUMMARY, gpu_cost

    from tuneloop.api.finetunejob import FineTuneJobStatus

    client = MlflowClient(tracking_uri=sqlite_uri)
    training = client.create_run(client.get_experiment_by_name("tuneloop").experiment_id, run_name="train")
    status = FineTuneJobStatus(phase="Registering", stage="register", **gpu_cost())
    spec = workload(sqlite_uri, adapter, "uid-1", training_run_id=training.info.run_id, job_status=status)

    first = register(spec)
    again = register(spec)  # a retried registration

    assert first.succeeded and again.already_registered
    metrics = client.get_run(training.info.run_id).data.metrics
    assert {key: value for key, value in metrics.items() if key.startswith("cost/")} == {
        "cost/gpu_hours_requested": 8.35, "cost/gpu_hours_used": 7.62, "cost/queued_seconds": 302,
        "cost/running_seconds": 4055, "cost/mfu": 0.412, "cost/tokens_per_second": 15200,
        "cost/gpu_hours_per_point": 0.167, "cost/cost": 29.23}
    assert len(client.get_metric_history(training.info.run_id, "cost/cost")) == 1
    version = client.get_model_version(MODEL, "1")
    assert version.tags["tuneloop.dev/cost"] == COST_SUMMARY
    assert f"Cost up to registration: {COST_SUMMARY}." in version.description
    assert "## Cost" in client.get_run(training.info.run_id).data.tags["mlflow.note.content"]


def test_a_rejected_request_fails_at_once_without_retrying(sqlite_uri, adapter):
    started = time.monotonic()
    result = register(workload(sqlite_uri, adapter, "uid-1", tags={"k" * 300: "too long a key"}, retry_seconds=60))

    assert (result.succeeded, result.reason) == (False, "RegistrationFailed")
    assert MODEL in result.message and time.monotonic() - started < 30


def test_missing_or_pickled_adapter_is_not_registered(tmp_path):
    missing = register(workload("sqlite:///unused.db", tmp_path / "nowhere", "uid-1"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_model.bin").write_bytes(b"pickle")
    only_pickles = register(workload("sqlite:///unused.db", pickled, "uid-1"))

    assert (missing.succeeded, missing.reason) == (False, "AdapterMissing")
    assert str(tmp_path / "nowhere") in missing.message
    assert only_pickles.reason == "AdapterMissing" and "adapter_model.bin" in only_pickles.message

    broken = tmp_path / "broken"
    broken.mkdir()
    save_file({"w": torch.zeros(2)}, str(broken / "adapter_model.safetensors"))
    (broken / "adapter_config.json").write_text("{not json")
    unreadable = register(workload("sqlite:///unused.db", broken, "uid-1"))
    assert unreadable.reason == "AdapterMissing" and "adapter_config.json is unreadable" in unreadable.message


def exports_on_disk(folder: Path, gguf_bytes: bytes, gguf_sha: str) -> list[ExportedFile]:
    merged = folder / "export" / "merged"
    merged.mkdir(parents=True, exist_ok=True)
    (merged / "config.json").write_text("{}", encoding="utf-8")
    (merged / "model.safetensors").write_bytes(b"merged weights")
    gguf = folder / "export" / "tickets-q8_0.gguf"
    gguf.write_bytes(gguf_bytes)
    return [ExportedFile(kind="merged", uri=str(merged), sha256="a" * 64, bytes=17),
            ExportedFile(kind="gguf", uri=str(gguf), sha256=gguf_sha, bytes=len(gguf_bytes), gguf_type="q8_0")]


def downloaded_bytes(uri: str, folder: Path) -> bytes:
    return Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(folder))).read_bytes()


def test_exports_are_artifacts_of_the_version_tagged_with_their_sha256_and_logged_once(sqlite_uri, adapter, tmp_path):
    exports = exports_on_disk(tmp_path, b"GGUF first", "b" * 64)
    result = register(workload(sqlite_uri, adapter, "uid-1", exports=exports))

    assert result.succeeded, result.message
    run = result.run_id
    assert [export.uri for export in result.exports] == [f"runs:/{run}/export/merged",
                                                        f"runs:/{run}/export/tickets-q8_0.gguf"]
    assert [export.sha256 for export in result.exports] == ["a" * 64, "b" * 64]
    client = MlflowClient(tracking_uri=sqlite_uri)
    tags = client.get_model_version(MODEL, result.version).tags
    assert tags["tuneloop.dev/export-merged"] == f"runs:/{run}/export/merged sha256={'a' * 64}"
    assert tags["tuneloop.dev/export-gguf"] == f"runs:/{run}/export/tickets-q8_0.gguf sha256={'b' * 64}"
    assert artifact_names(client, run, "export/merged") == {"config.json", "model.safetensors"}
    gguf_uri = result.exports[1].uri
    assert downloaded_bytes(gguf_uri, tmp_path / "dl1") == b"GGUF first"

    # A retry with the same exports uploads nothing again, even where the local file has changed since.
    Path(exports[1].uri).write_bytes(b"GGUF rewritten")
    again = register(workload(sqlite_uri, adapter, "uid-1", exports=exports))
    assert again.already_registered and again.exports == result.exports
    assert downloaded_bytes(gguf_uri, tmp_path / "dl2") == b"GGUF first"

    # An export with another sha256 is uploaded and the tag follows it.
    changed = register(workload(sqlite_uri, adapter, "uid-1",
                                exports=exports_on_disk(tmp_path, b"GGUF new", "c" * 64)))
    assert changed.already_registered and changed.exports[1].sha256 == "c" * 64
    assert client.get_model_version(MODEL, result.version).tags["tuneloop.dev/export-gguf"].endswith("c" * 64)
    assert downloaded_bytes(gguf_uri, tmp_path / "dl3") == b"GGUF new"
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1


def test_an_export_that_is_not_on_disk_is_not_registered(sqlite_uri, adapter, tmp_path):
    exports = [ExportedFile(kind="gguf", uri=str(tmp_path / "gone.gguf"), sha256="b" * 64, bytes=1, gguf_type="f16")]

    result = register(workload(sqlite_uri, adapter, "uid-1", exports=exports))

    assert (result.succeeded, result.reason) == (False, "InvalidWorkload")
    assert "exports[0].uri" in result.message and "gone.gguf" in result.message
    assert MlflowClient(tracking_uri=sqlite_uri).search_model_versions(f"name = '{MODEL}'") == []


# --- through an `mlflow server`, with the program as a pod runs it ---

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, log_path: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"mlflow server at {url} not healthy after {timeout}s:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def server_url() -> str:
    """Where the server will listen; nothing does until `mlflow_server` is requested."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def mlflow_server(server_url, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    log_path = folder / "server.log"
    port = server_url.rsplit(":", 1)[1]
    with log_path.open("w") as log_file:
        server = subprocess.Popen(
            [str(MLFLOW_CLI), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts",
             "--host", "127.0.0.1", "--port", port, "--workers", "1"],
            cwd=folder, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            # so that it may deliver registry webhooks to a receiver on 127.0.0.1 (tests/test_model_aliases.py)
            env={**os.environ, "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true", "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http",
                 "MLFLOW_WEBHOOK_CACHE_TTL": "1"})
    try:
        wait_until_healthy(server_url, server, log_path)
        yield server_url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def registration_command(spec: RegisterWorkload, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(spec.model_dump_json(by_alias=True), encoding="utf-8")
    return [sys.executable, "-m", "tuneloop_evaluator.register", "--spec", str(folder / "spec.json"),
            "--result", str(folder / "result.json"), "--termination-log", str(folder / "termination-log")]


def read_result(folder: Path) -> RegisterResult:
    return RegisterResult.model_validate_json((folder / "result.json").read_text(encoding="utf-8"))


def test_unreachable_mlflow_fails_then_registration_waits_for_it(server_url, adapter, tmp_path, request):
    started = time.monotonic()
    down = subprocess.run(registration_command(workload(server_url, adapter, "uid-down", retry_seconds=3),
                                               tmp_path / "down"), cwd=tmp_path, capture_output=True, text=True,
                          timeout=30)
    unavailable = read_result(tmp_path / "down")
    assert down.returncode == 1 and unavailable.reason == "RegistryUnavailable"
    assert server_url in unavailable.message and time.monotonic() - started < 30
    assert "retry 1" in down.stderr

    waiting = subprocess.Popen(registration_command(workload(server_url, adapter, "uid-up", retry_seconds=60),
                                                    tmp_path / "up"), cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    # The server starts only once the registration has found it down and is waiting for it.
    seen = []
    for line in waiting.stderr:
        seen.append(line)
        if "is unavailable" in line:
            break
    assert seen and "is unavailable" in seen[-1], "".join(seen)
    request.getfixturevalue("mlflow_server")
    _, stderr = waiting.communicate(timeout=60)

    assert waiting.returncode == 0, "".join(seen) + stderr
    assert read_result(tmp_path / "up").version is not None


def test_registers_through_the_mlflow_server(mlflow_server, adapter, records, tmp_path, monkeypatch):
    spec = workload(mlflow_server, adapter, "uid-http", model_name="served-over-http", set_champion=True,
                    records_path=str(records))
    done = subprocess.run(registration_command(spec, tmp_path / "run"), cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    result = read_result(tmp_path / "run")
    assert result.aliases == ["challenger", "champion"]
    assert json.loads((tmp_path / "run" / "termination-log").read_text())["uri"] == result.uri
    client = MlflowClient(tracking_uri=mlflow_server)
    assert artifact_names(client, result.run_id, "adapter") == ADAPTER_FILES
    assert artifact_names(client, result.run_id, "evaluation") == {"records.jsonl"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    downloaded = Path(mlflow.artifacts.download_artifacts("models:/served-over-http@champion",
                                                          dst_path=str(tmp_path / "dl")))
    assert {path.name for path in downloaded.iterdir()} == ADAPTER_FILES


def test_a_registered_version_is_fetched_with_the_adapter_files_at_the_root(sqlite_uri, adapter, tmp_path):
    result = register(workload(sqlite_uri, adapter, "uid-fetch"))
    destination = tmp_path / "served" / "adapter"
    env = {**os.environ, "MLFLOW_TRACKING_URI": sqlite_uri}

    fetched = subprocess.run([sys.executable, "-m", "tuneloop_evaluator.fetch_adapter", result.uri, str(destination)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    assert fetched.returncode == 0, fetched.stderr
    assert {path.name for path in destination.iterdir()} == ADAPTER_FILES
    missing = subprocess.run([sys.executable, "-m", "tuneloop_evaluator.fetch_adapter", f"models:/{MODEL}/99",
                              str(tmp_path / "none")], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 1 and f"models:/{MODEL}/99" in missing.stderr
