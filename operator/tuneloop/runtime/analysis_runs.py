"""Analyses in flight, one per ModelDeployment, run as asyncio tasks beside the reconcile passes.

An analysis sends real requests for seconds to minutes; a reconcile pass must not wait for it.
The pass asks for a run by id (RunAnalysis is re-emitted every pass until its result is seen),
this registry starts it once and hands the result to the next pass. Results live in memory: an
operator that restarts mid-analysis simply runs that analysis again, which is what it would do
with a lost result anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tuneloop.reconcile.modeldeployment import AnalysisResult

log = logging.getLogger("tuneloop.analysis")
Key = tuple[str, str]  # (namespace, name)


@dataclass
class Run:
    run_id: str
    task: asyncio.Task[AnalysisResult]


@dataclass
class AnalysisRuns:
    runs: dict[Key, Run] = field(default_factory=dict)

    def start(self, key: Key, run_id: str, analysis: Callable[[], Awaitable[AnalysisResult]]) -> bool:
        """Start `analysis` unless this run_id already runs or ran; a different run replaces the old one."""
        current = self.runs.get(key)
        if current is not None and current.run_id == run_id:
            return False
        if current is not None:
            current.task.cancel()
        self.runs[key] = Run(run_id, asyncio.create_task(self._guarded(run_id, analysis), name=f"analysis {run_id}"))
        return True

    @staticmethod
    async def _guarded(run_id: str, analysis: Callable[[], Awaitable[AnalysisResult]]) -> AnalysisResult:
        try:
            return await analysis()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug in the analysis fails the rollout, it does not pass it
            log.exception("analysis %s crashed", run_id)
            return AnalysisResult(run_id, passed=False, reason=f"the analysis crashed: {error!r}")

    def result(self, key: Key) -> AnalysisResult | None:
        """The finished result of the key's latest run; None while it runs or when there is none."""
        run = self.runs.get(key)
        if run is None or not run.task.done() or run.task.cancelled():
            return None
        return run.task.result()

    def forget(self, key: Key) -> None:
        run = self.runs.pop(key, None)
        if run is not None:
            run.task.cancel()

    async def close(self) -> None:
        for key in list(self.runs):
            self.forget(key)
