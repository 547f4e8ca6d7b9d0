"""Registering an adapter as a new version of an MLflow registered model, idempotently: a version
already tagged with the job's uid is returned instead of creating another.

Artifacts: `adapter/` (safetensors weights, configs, tokenizer) and `evaluation/` (per-example
records) on the training run, or on a run of its own; the version's source is
`runs:/<run_id>/adapter`, so `models:/<name>@champion` downloads the adapter files. The run gets
the version's lineage and gate tags too, and its description: the job's whole report. Checked
exports (merged model, GGUF file) go under `export/` of the same run, named by version tags
(tuneloop.registry.exports).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import requests
from mlflow.entities import Metric, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from tenacity import RetryCallState

from tuneloop.api.evaluation import RegistryResults
from tuneloop.api.modeldeployment import LORA_TAG, lora_options
from tuneloop.api.workloads import RegisterResult, RegisterWorkload
from tuneloop.registry.connection import client as mlflow_client
from tuneloop.registry.cost import COST_TAG, cost_metrics, cost_tags
from tuneloop.registry.description import DESCRIPTION_TAG, headline, run_description
from tuneloop.registry.experiments import ensure_experiment
from tuneloop.registry.exports import ExportMissing, check_exports, log_exports, registered_exports
from tuneloop.registry.lineage import BASE_MODEL_TAG, JOB_TAG, JOB_UID_TAG, MAX_TAG_VALUE
from tuneloop.report import REPORT_FILE
from tuneloop.retry import RetryPolicy, attempts_made, elapsed, retrying

log = logging.getLogger("tuneloop.registry")

CHAMPION = "champion"
CHALLENGER = "challenger"
ADAPTER_ARTIFACT_PATH = "adapter"
EVALUATION_ARTIFACT_PATH = "evaluation"
REPORT_ARTIFACT_PATH = "report"
MODEL_DESCRIPTION = ("Adapters fine-tuned by Tuneloop. Alias champion: the version served; "
                     "challenger: the latest candidate. Versions are never deleted.")

# What loads an adapter (or a full fine-tune's model) with its tokenizer; checkpoints, optimizer
# state and pickled weights (.bin, .pt) stay behind.
CONFIG_FILES = frozenset({"adapter_config.json", "config.json", "generation_config.json"})
TOKENIZER_FILES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
})
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")

# MLflow's own HTTP retries would hide a down server for minutes; `with_retries` owns the timing.
MLFLOW_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
TRANSIENT_ERROR_CODES = frozenset({"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"})

T = TypeVar("T")


class AdapterMissing(Exception):
    pass


class RegistryUnavailable(Exception):
    pass


def failure(reason: str, message: str) -> RegisterResult:
    return RegisterResult(succeeded=False, reason=reason, message=message)


def without_credentials(uri: str) -> str:
    """The URI as it may appear in logs and messages: user and password removed."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def quoted(value: str) -> str:
    """A string literal for an MLflow search filter."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise ValueError(f"{value!r} holds both quote characters and cannot be searched for in MLflow")


def adapter_files(folder: Path) -> list[Path]:
    """The files of `folder` worth registering; AdapterMissing when there are no safetensors weights."""
    if not folder.is_dir():
        raise AdapterMissing(f"adapter folder {folder} does not exist")
    files = sorted(path for path in folder.iterdir() if path.is_file())
    weights = [path for path in files if path.name.endswith(WEIGHT_SUFFIXES)]
    if not any(path.name.endswith(".safetensors") for path in weights):
        found = ", ".join(path.name for path in files) or "nothing"
        raise AdapterMissing(f"adapter folder {folder} has no .safetensors weights (found: {found}); "
                             "pickled weights (.bin, .pt) are never registered")
    return weights + [path for path in files if path.name in CONFIG_FILES | TOKENIZER_FILES]


def is_transient(error: BaseException) -> bool:
    """True for errors a later attempt may not see: server down, timeouts, 5xx, rate limits."""
    if isinstance(error, requests.HTTPError):
        status = error.response.status_code if error.response is not None else None
        return status is None or status >= 500 or status == 429
    if isinstance(error, requests.RequestException):
        return True
    if isinstance(error, MlflowException):
        return error.error_code in TRANSIENT_ERROR_CODES
    return False


def with_retries(action: Callable[[], T], tracking_uri: str, retry_seconds: float) -> T:
    """`action()`, again after transient errors until `retry_seconds` have passed; then RegistryUnavailable."""
    server = without_credentials(tracking_uri)

    def on_retry(state: RetryCallState) -> None:
        log.warning("MLflow at %s is unavailable (%s); retry %d in %.1fs, giving up after %.0fs",
                    server, state.outcome.exception(), state.attempt_number, state.upcoming_sleep, retry_seconds)

    retryer = retrying(RetryPolicy(attempts=None, deadline_seconds=retry_seconds), is_transient, on_retry=on_retry)
    try:
        return retryer(action)
    except Exception as error:
        if not is_transient(error):
            raise
        raise RegistryUnavailable(f"MLflow at {server} is unavailable after {attempts_made(retryer)} attempts "
                                  f"in {elapsed(retryer):.0f}s: {error}") from error


def find_registered_version(client: MlflowClient, workload: RegisterWorkload) -> ModelVersion | None:
    versions = client.search_model_versions(
        f"name = {quoted(workload.model_name)} and tags.`{JOB_UID_TAG}` = {quoted(workload.job_uid)}")
    return min(versions, key=lambda version: int(version.version), default=None)


def existing_run_id(client: MlflowClient, run_id: str) -> str | None:
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    return run.info.run_id if run.info.lifecycle_stage == "active" else None


def registration_run_id(client: MlflowClient, workload: RegisterWorkload) -> str:
    """The training run when it exists, else this job's own run (found again by uid after a crash)."""
    if workload.training_run_id:
        if run_id := existing_run_id(client, workload.training_run_id):
            return run_id
        log.warning("training run %s is not in MLflow; the adapter goes to a run of its own",
                    workload.training_run_id)
    experiment = ensure_experiment(client, workload.tracking.experiment)
    earlier = client.search_runs([experiment], filter_string=f"tags.`{JOB_UID_TAG}` = {quoted(workload.job_uid)}",
                                 max_results=1)
    if earlier:
        return earlier[0].info.run_id
    run = client.create_run(experiment, run_name=workload.tracking.run_name or workload.job,
                            tags={JOB_UID_TAG: workload.job_uid, JOB_TAG: workload.job})
    return run.info.run_id


def upload_run_outputs(client: MlflowClient, run_id: str, workload: RegisterWorkload, files: list[Path]) -> None:
    for path in files:
        client.log_artifact(run_id, str(path), ADAPTER_ARTIFACT_PATH)
    if workload.records_path:
        records = Path(workload.records_path)
        if records.is_dir():
            client.log_artifacts(run_id, str(records), EVALUATION_ARTIFACT_PATH)
        elif records.is_file():
            client.log_artifact(run_id, str(records), EVALUATION_ARTIFACT_PATH)
        else:
            log.warning("evaluation records %s do not exist; registering without them", records)
    logged = client.get_run(run_id).data.metrics  # the trainer's and the evaluator's are not logged twice
    log_metrics(client, run_id, {key: value for key, value in workload.metrics.items() if key not in logged})


def log_metrics(client: MlflowClient, run_id: str, values: dict[str, float]) -> None:
    """One point each, at this moment."""
    if values:
        timestamp = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(key, float(value), timestamp, 0) for key, value in values.items()])


def tell_the_story(client: MlflowClient, run_id: str, workload: RegisterWorkload, result: RegisterResult) -> None:
    """The run carries the version's lineage and gate tags, and the job's report as its description; the
    version's description starts with the verdict."""
    from tuneloop.registry.run_report import read_records

    regressed = read_records(Path(workload.records_path)).regressed if workload.records_path else ()
    tags = {**version_tags(workload), JOB_TAG: workload.job,
            DESCRIPTION_TAG: run_description(workload.job, workload.job_status, version_tags(workload), result,
                                             regressed)}
    client.log_batch(run_id, tags=[RunTag(key, value[:MAX_TAG_VALUE] if key != DESCRIPTION_TAG else value)
                                   for key, value in tags.items()])
    log_cost(client, run_id, workload)
    cost = version_tags(workload).get(COST_TAG)
    client.update_model_version(workload.model_name, result.version, description=(
        f"{headline(workload.job_status, version_tags(workload), result)}\n\n"
        + (f"Cost up to registration: {cost}.\n\n" if cost else "")
        + f"Adapter of FineTuneJob {workload.job} (uid {workload.job_uid}); the training run's description has "
        f"the whole report, and its artifact {REPORT_ARTIFACT_PATH}/{REPORT_FILE} the same as a page with charts."))
    with tempfile.TemporaryDirectory(prefix="tuneloop-report-") as folder:
        report = html_report(workload, result, run_id, Path(folder))
        if report is not None:
            client.log_artifact(run_id, str(report), REPORT_ARTIFACT_PATH)


def log_cost(client: MlflowClient, run_id: str, workload: RegisterWorkload) -> None:
    """The `cost/*` metrics on the run; one point each, a retry adds none unless a figure changed."""
    logged = client.get_run(run_id).data.metrics
    cost = workload.job_status.cost if workload.job_status else None
    log_metrics(client, run_id, {key: value for key, value in cost_metrics(cost).items() if logged.get(key) != value})


def html_report(workload: RegisterWorkload, result: RegisterResult, run_id: str, folder: Path) -> Path | None:
    """The job's HTML report (loss curves, metrics, examples) as the run will hold it, with the version
    just registered. A report that cannot be drawn costs a warning, never the registration."""
    from tuneloop.registry.run_report import report_from_run
    from tuneloop.report import write_report

    if workload.job_status is None:
        return None
    namespace, _, name = workload.job.rpartition("/")
    status = workload.job_status.model_copy(update={"registry": RegistryResults(
        model_name=result.model_name, version=result.version, uri=result.uri, aliases=result.aliases)})
    try:
        report = report_from_run(status, namespace=namespace, name=name, job_uid=workload.job_uid,
                                 base_model=workload.tags.get(BASE_MODEL_TAG, "?"), confidence=None,
                                 tracking_uri=workload.tracking.tracking_uri, run_id=run_id)
        return write_report(report, folder)
    except (OSError, ValueError, RuntimeError) as error:  # matplotlib and the records file are not worth a retry
        log.warning("the HTML report could not be written, registering without it: %s", error)
        return None


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name, description=MODEL_DESCRIPTION)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def version_tags(workload: RegisterWorkload) -> dict[str, str]:
    return {**workload.tags, JOB_UID_TAG: workload.job_uid, **cost_tags(workload.job_status)}


def create_version(client: MlflowClient, workload: RegisterWorkload, run_id: str,
                   export_tags: dict[str, str]) -> ModelVersion:
    """A new version whose tags, the uid among them, exist from its first moment (a crash cannot split them)."""
    ensure_registered_model(client, workload.model_name)
    return client.create_model_version(
        workload.model_name, f"runs:/{run_id}/{ADAPTER_ARTIFACT_PATH}", run_id=run_id,
        tags={**version_tags(workload), **export_tags},
        description=f"Adapter of FineTuneJob {workload.job} (uid {workload.job_uid}).")


def ensure_tags(client: MlflowClient, version: ModelVersion, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        if version.tags.get(key) != value:
            client.set_model_version_tag(version.name, version.version, key, value)


def alias_versions(client: MlflowClient, name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def describe(version: str | None) -> str:
    return f"version {version}" if version is not None else "no champion"


def move_challenger(client: MlflowClient, name: str, version: str, current: str | None) -> str | None:
    """Challenger follows the newest candidate: a late retry of an older job does not pull it back."""
    if current is not None and int(current) > int(version):
        return f"challenger stays on the newer version {current}"
    if current != version:
        client.set_registered_model_alias(name, CHALLENGER, version)
        log.info("alias %s of %s -> version %s", CHALLENGER, name, version)
    return None


def move_champion(client: MlflowClient, workload: RegisterWorkload, version: str, current: str | None) -> str | None:
    """Champion moves only from the version the candidate beat; returns why it did not."""
    if current == version:
        return None
    if current != workload.expected_champion:
        return (f"champion not moved: the candidate was evaluated against {describe(workload.expected_champion)}, "
                f"but the champion is now {describe(current)}; evaluate again, or move the alias by hand")
    client.set_registered_model_alias(workload.model_name, CHAMPION, version)
    log.info("alias %s of %s: %s -> version %s", CHAMPION, workload.model_name, describe(current), version)
    return None


def move_aliases(client: MlflowClient, workload: RegisterWorkload, version: str) -> list[str]:
    """Set the requested aliases; the notes say which were left where they were, and why."""
    current = alias_versions(client, workload.model_name)
    notes = []
    if workload.set_challenger:
        notes.append(move_challenger(client, workload.model_name, version, current.get(CHALLENGER)))
    if workload.set_champion:
        notes.append(move_champion(client, workload, version, current.get(CHAMPION)))
    return [note for note in notes if note]


def register_once(client: MlflowClient, workload: RegisterWorkload, files: list[Path]) -> RegisterResult:
    """One attempt; every step is safe to repeat, so a retry after any failure picks up where it stopped."""
    version = find_registered_version(client, workload)
    already_registered = version is not None
    if version is None:
        run_id = registration_run_id(client, workload)
        upload_run_outputs(client, run_id, workload, files)
        export_tags = log_exports(client, run_id, workload.exports)
        if run_id != workload.training_run_id:
            client.set_terminated(run_id, "FINISHED")
        version = create_version(client, workload, run_id, export_tags)
    else:
        ensure_tags(client, version, version_tags(workload))
        if version.run_id:
            log_exports(client, version.run_id, workload.exports, version)
    number = str(version.version)
    notes = move_aliases(client, workload, number)
    aliases = sorted(client.get_model_version(workload.model_name, number).aliases)
    summary = (f"{'already registered' if already_registered else 'registered'} as "
               f"{workload.model_name} version {number}")
    result = RegisterResult(succeeded=True, message="; ".join([summary, *notes]), model_name=workload.model_name,
                            version=number, uri=f"models:/{workload.model_name}/{number}", aliases=aliases,
                            run_id=version.run_id, already_registered=already_registered,
                            exports=registered_exports(workload.exports, version.run_id) if version.run_id else [])
    if version.run_id:
        tell_the_story(client, version.run_id, workload, result)
    return result


def adapter_tags(folder: Path) -> dict[str, str]:
    """What a server checks before loading the adapter, from its own adapter_config.json (what was
    saved, not what was asked for); a full model has none."""
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        return {}
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AdapterMissing(f"{config_file} is unreadable: {error}") from error
    if not isinstance(config, dict):
        raise AdapterMissing(f"{config_file} is not a JSON object")
    return {LORA_TAG: json.dumps(lora_options(config), separators=(",", ":"))}


def register(workload: RegisterWorkload) -> RegisterResult:
    try:
        files = adapter_files(Path(workload.adapter_path))
        workload = workload.model_copy(update={"tags": {**workload.tags, **adapter_tags(Path(workload.adapter_path))}})
    except AdapterMissing as error:
        return failure("AdapterMissing", str(error))
    try:
        check_exports(workload.exports)
    except ExportMissing as error:
        return failure("InvalidWorkload", str(error))
    tracking_uri = workload.tracking.tracking_uri
    client = mlflow_client(tracking_uri)
    try:
        return with_retries(lambda: register_once(client, workload, files), tracking_uri, workload.retry_seconds)
    except RegistryUnavailable as error:
        return failure("RegistryUnavailable", str(error))
    except (MlflowException, requests.RequestException, OSError, ValueError) as error:
        return failure("RegistrationFailed",
                       f"registering {workload.adapter_path} as {workload.model_name} in MLflow at "
                       f"{without_credentials(tracking_uri)} failed: {error}")
