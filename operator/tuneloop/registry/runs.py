"""The training run: created with its lineage, its parameters and its dataset as an input; metrics
logged off the training thread in batches."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from tuneloop.api.workloads import Tracking
from tuneloop.registry.connection import client
from tuneloop.registry.experiments import ensure_experiment

log = logging.getLogger("tuneloop.registry")
MAX_PARAM_VALUE = 6000
MAX_DIGEST = 36  # MLflow's dataset digest column


@dataclass
class DatasetInput:
    """The training data as MLflow shows it under the run's inputs."""

    name: str
    source: str  # the URI the spec gave
    sha256: str
    profile: dict[str, Any]

    def entity(self) -> Any:
        from mlflow.entities import Dataset, DatasetInput as MlflowDatasetInput, InputTag

        source_type = self.source.split("://", 1)[0] if "://" in self.source else "local"
        dataset = Dataset(name=self.name, digest=self.sha256[:MAX_DIGEST], source_type=source_type,
                          source=json.dumps({"uri": self.source}),
                          profile=json.dumps({**self.profile, "sha256": self.sha256}))
        return MlflowDatasetInput(dataset=dataset, tags=[InputTag("mlflow.data.context", "training")])


class MetricsLogger:
    """`log(at_step, metrics)` only queues; a thread sends batches every `flush_seconds`.

    An MLflow that cannot be reached costs a warning, never the training run.
    """

    def __init__(self, tracking: Tracking | None, params: dict[str, Any], flush_seconds: float = 5.0,
                 tags: dict[str, str] | None = None, dataset: DatasetInput | None = None):
        self.run_id: str | None = None
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None
        if tracking is None:
            return
        try:
            from mlflow.entities import Param

            self._client = client(tracking.tracking_uri)
            experiment_id = ensure_experiment(self._client, tracking.experiment)
            run = self._client.create_run(experiment_id, run_name=tracking.run_name,
                                          tags={**tracking.tags, **(tags or {})})
            self.run_id = run.info.run_id
            self._client.log_batch(self.run_id, params=[
                Param(key, str(value)[:MAX_PARAM_VALUE]) for key, value in params.items()])
            if dataset is not None:
                self._client.log_inputs(self.run_id, datasets=[dataset.entity()])
        except Exception as error:  # unreachable server, bad URI, missing package
            log.warning("MLflow at %s is not usable, training goes on without tracking: %s",
                        tracking.tracking_uri, error)
            self._client = None
            return
        self.flush_seconds = flush_seconds
        self._thread = threading.Thread(target=self._run, name="mlflow-logger", daemon=True)
        self._thread.start()

    def log(self, at_step: int, metrics: dict[str, float | None]) -> None:
        if self._client is not None:
            timestamp = int(time.time() * 1000)
            for key, value in metrics.items():
                if value is not None:
                    self._queue.put((key, float(value), timestamp, at_step))

    def _send(self) -> None:
        from mlflow.entities import Metric

        batch = []
        while not self._queue.empty() and len(batch) < 1000:
            key, value, timestamp, step = self._queue.get_nowait()
            batch.append(Metric(key, value, timestamp, step))
        if batch:
            try:
                self._client.log_batch(self.run_id, metrics=batch)
            except Exception as error:
                log.warning("MLflow logging failed (%d metrics dropped): %s", len(batch), error)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self._send()

    def close(self, status: str = "FINISHED") -> None:
        if self._client is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        while not self._queue.empty():
            self._send()
        try:
            self._client.set_terminated(self.run_id, status=status)
        except Exception as error:
            log.warning("MLflow run %s could not be closed: %s", self.run_id, error)
