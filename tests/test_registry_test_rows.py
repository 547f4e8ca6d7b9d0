"""The champion's test rows in a real (SQLite) MLflow: logged on the training run, fetched for the next
candidate as its regression set."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tuneloop.api.workloads import Tracking
from tuneloop.registry.champion import ChampionUnavailable
from tuneloop.registry.test_rows import champion_test_rows, log_test_rows
from tuneloop.workload_data.rows import Example, load_dataset, write_jsonl

MODEL = "support-tickets"


@pytest.fixture
def sqlite_uri(tmp_path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).create_experiment("tuneloop", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri


def split_file(folder: Path, name: str, prompts: list[str]) -> Path:
    rows = [Example(line=index + 1, messages=[{"role": "user", "content": prompt},
                                              {"role": "assistant", "content": f"answer {index}"}])
            for index, prompt in enumerate(prompts)]
    path = folder / name
    write_jsonl(path, rows)
    return path


def training_run(uri: str) -> str:
    mlflow = MlflowClient(tracking_uri=uri)
    return mlflow.create_run(mlflow.get_experiment_by_name("tuneloop").experiment_id).info.run_id


def register(uri: str, run_id: str, champion: bool) -> str:
    mlflow = MlflowClient(tracking_uri=uri)
    if not mlflow.search_registered_models(f"name = '{MODEL}'"):
        mlflow.create_registered_model(MODEL)
    version = mlflow.create_model_version(MODEL, f"runs:/{run_id}/adapter", run_id=run_id).version
    if champion:
        mlflow.set_registered_model_alias(MODEL, "champion", version)
    return str(version)


def test_the_champions_test_rows_come_back_as_its_run_logged_them(sqlite_uri, tmp_path):
    split = split_file(tmp_path, "hold-out.jsonl", ["Where is my parcel?", "Cancel my order 1234"])
    run_id = training_run(sqlite_uri)
    log_test_rows(Tracking(tracking_uri=sqlite_uri), run_id, split)
    version = register(sqlite_uri, run_id, champion=True)

    found = champion_test_rows(sqlite_uri, MODEL, tmp_path / "regression")

    assert found is not None and found.version == version
    assert found.path.name == "test.jsonl" and found.path.is_relative_to(tmp_path / "regression")
    assert found.path.read_bytes() == split.read_bytes()
    rows = load_dataset(found.path).examples
    assert [row.messages[0]["content"] for row in rows] == ["Where is my parcel?", "Cancel my order 1234"]


def test_a_later_log_replaces_the_test_rows_and_the_champion_is_the_aliased_version(sqlite_uri, tmp_path):
    first_run, second_run = training_run(sqlite_uri), training_run(sqlite_uri)
    tracking = Tracking(tracking_uri=sqlite_uri)
    log_test_rows(tracking, first_run, split_file(tmp_path, "a.jsonl", ["old question"]))
    log_test_rows(tracking, first_run, split_file(tmp_path, "b.jsonl", ["retried question"]))
    log_test_rows(tracking, second_run, split_file(tmp_path, "c.jsonl", ["challenger question"]))
    champion = register(sqlite_uri, first_run, champion=True)
    register(sqlite_uri, second_run, champion=False)  # a newer version that did not become champion

    found = champion_test_rows(sqlite_uri, MODEL, tmp_path / "regression")

    assert found.version == champion == "1"
    assert [row.messages[0]["content"] for row in load_dataset(found.path).examples] == ["retried question"]


def test_no_champion_means_no_regression_set(sqlite_uri, tmp_path):
    assert champion_test_rows(sqlite_uri, MODEL, tmp_path / "regression") is None  # no registered model
    run_id = training_run(sqlite_uri)
    log_test_rows(Tracking(tracking_uri=sqlite_uri), run_id, split_file(tmp_path, "t.jsonl", ["q"]))
    register(sqlite_uri, run_id, champion=False)
    assert champion_test_rows(sqlite_uri, MODEL, tmp_path / "regression") is None  # no champion alias


def test_a_champion_registered_before_test_rows_were_logged_has_none_and_the_log_says_so(
        sqlite_uri, tmp_path, caplog):
    register(sqlite_uri, training_run(sqlite_uri), champion=True)
    with caplog.at_level(logging.INFO, logger="tuneloop.registry"):
        assert champion_test_rows(sqlite_uri, MODEL, tmp_path / "regression") is None
    assert "support-tickets version 1 (champion) has no evaluation/test.jsonl on its run" in caplog.text


def closed_port_uri() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_an_mlflow_that_cannot_be_asked_is_champion_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(ChampionUnavailable, match="could not be asked for registered model 'support-tickets'"):
        champion_test_rows(closed_port_uri(), MODEL, tmp_path / "regression")


def test_logging_to_an_mlflow_that_cannot_take_it_warns_and_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    split = split_file(tmp_path, "test.jsonl", ["q"])
    with caplog.at_level(logging.WARNING, logger="tuneloop.registry"):
        log_test_rows(Tracking(tracking_uri=closed_port_uri()), "0123456789abcdef", split)
    assert "could not be logged to run 0123456789abcdef" in caplog.text
