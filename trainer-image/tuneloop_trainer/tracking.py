"""MLflow run metrics and parameters, logged off the training thread in batches."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from tuneloop.api.workloads import Tracking

log = logging.getLogger("tuneloop_trainer")


class MetricsLogger:
    """`log(at_step, **metrics)` only queues; a thread sends batches every `flush_seconds`.

    An MLflow that cannot be reached costs a warning, never the training run.
    """

    def __init__(self, tracking: Tracking | None, params: dict[str, Any], flush_seconds: float = 5.0):
        self.run_id: str | None = None
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None
        if tracking is None:
            return
        try:
            import mlflow
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=tracking.tracking_uri)
            experiment = self._client.get_experiment_by_name(tracking.experiment)
            experiment_id = (experiment.experiment_id if experiment
                             else self._client.create_experiment(tracking.experiment))
            run = self._client.create_run(experiment_id, run_name=tracking.run_name)
            self.run_id = run.info.run_id
            self._client.log_batch(self.run_id, params=[
                mlflow.entities.Param(key, str(value)[:6000]) for key, value in params.items()])
        except Exception as error:  # unreachable server, bad URI, missing package
            log.warning("MLflow at %s is not usable, training goes on without tracking: %s",
                        tracking.tracking_uri, error)
            self._client = None
            return
        self.flush_seconds = flush_seconds
        self._thread = threading.Thread(target=self._run, name="mlflow-logger", daemon=True)
        self._thread.start()

    def log(self, at_step: int, /, **metrics: float | None) -> None:
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
