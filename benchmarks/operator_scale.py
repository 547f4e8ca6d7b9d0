"""Scale benchmark of the Tuneloop operator: a burst of FineTuneJobs against the API emulator.

The real kopf handlers (tuneloop.handlers, re-imported into a fresh kopf registry, as
tests/test_operator.py does) run in this process against tests/k8s_emulator.py's hardened
in-memory API server. A separate aiohttp client session POSTs N copies of
examples/cluster/finetunejob.yaml (ftj-00000, ftj-00001, ...) over HTTP, at most --concurrency in
flight, as fast as it can. The script then waits until every FineTuneJob has its batch/v1 Job.

Timing is exact. The emulator's `_store` is wrapped in the process that runs the emulator (every
object version it stores goes through it). So the moment each Job, ConfigMap and FineTuneJob status
is stored is taken on the same monotonic clock as the client's timestamp just before each POST.

    python benchmarks/operator_scale.py                 # 1000 FineTuneJobs, all in one process
    python benchmarks/operator_scale.py --jobs 50       # a quick smoke run
    python benchmarks/operator_scale.py --split         # emulator + client in a child process
    python benchmarks/operator_scale.py --profile /tmp/operator.pstats   # where this process's CPU goes
    python benchmarks/operator_scale.py --jobs 300 --split --interval 10 --steady 40   # the timers' load
    python benchmarks/operator_scale.py --apiserver     # against a real kube-apiserver (tools/build_kube.sh)

Targets (from the issue): create->Job p99 under 2 s, no reconcile errors, peak RSS under 200 MiB.
By default the RSS is the whole process, so it includes the emulator (every object version it ever
stored, every request it ever served) and the client as well as the operator. With --split the
emulator and the client run in a child process (its own core, as an API server would have), and the
measured process holds the operator only. --tracemalloc shows which lines hold the memory the
burst added; the garbage collector's share of the CPU is printed in every run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import copy
import cProfile
import gc
import io
import json
import logging
import os
import pstats
import resource
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # k8s_emulator.py and the crd_schema.py it imports
sys.path.insert(0, str(REPO / "operator"))  # tuneloop, also when the package is not installed

import aiohttp  # noqa: E402
import yaml  # noqa: E402

CRDS = list(yaml.safe_load_all((REPO / "crds" / "tuneloop.dev_crds.yaml").read_text()))
EXAMPLE = yaml.safe_load((REPO / "examples" / "cluster" / "finetunejob.yaml").read_text())
FTJ_PATH = "/apis/tuneloop.dev/v1alpha1/namespaces/{namespace}/finetunejobs"
CATALOG = {"smollm2-135m-instruct": "pvc://models/smollm2-135m-instruct"}
TOKEN = "bench"


# --- measuring helpers ---

def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(rank) - 1]


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"p50 {percentile(values, 50):.3f} s  p90 {percentile(values, 90):.3f} s  "
            f"p99 {percentile(values, 99):.3f} s  max {max(values):.3f} s  (n={len(values)})")


def version(package: str) -> str:
    from importlib.metadata import version as metadata_version

    return metadata_version(package)


class GcTimer:
    """Time spent in Python's cyclic garbage collector (gc.callbacks), by generation."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._started = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1

    def since(self, before: tuple[list[float], list[int]]) -> str:
        seconds = [now - then for now, then in zip(self.seconds, before[0])]
        counts = [now - then for now, then in zip(self.collections, before[1])]
        return (f"{sum(seconds):.2f} s in {sum(counts)} collections "
                f"(gen2: {counts[2]} taking {seconds[2]:.2f} s)")

    def mark(self) -> tuple[list[float], list[int]]:
        return list(self.seconds), list(self.collections)


async def loop_lag(samples: list[float], stop: asyncio.Event, period: float = 0.05) -> None:
    """How late the event loop wakes a 50 ms sleeper: a direct view of CPU saturation."""
    while not stop.is_set():
        started = time.monotonic()
        await asyncio.sleep(period)
        samples.append(time.monotonic() - started - period)


# --- the cluster side: emulator, recorder, client ---

class Recorder:
    """What the emulator stored and when (time.monotonic), hooked into HardenedEmulator."""

    def __init__(self, expected: int) -> None:
        self.ftj_stored: dict[str, float] = {}
        self.job_stored: dict[str, float] = {}  # FineTuneJob name (the Job's owner) -> first Job ADDED
        self.status_training: dict[str, float] = {}  # FineTuneJob name -> first status with phase Training
        self.creations: collections.Counter[str] = collections.Counter()  # kind -> objects ADDED
        self.conflicts: collections.Counter[str] = collections.Counter()  # kind -> 409 AlreadyExists answers
        self.all_jobs = asyncio.Event()
        self.expected = expected

    def install(self) -> None:
        import k8s_emulator

        emulator_cls = k8s_emulator.HardenedEmulator  # an attrs slots class: hook the class, in this process
        original_store, original_create = emulator_cls._store, emulator_cls.create_object
        recorder = self

        def _store(emulator: Any, key: tuple[Any, ...], obj: dict[str, Any], event: str) -> dict[str, Any]:
            stored = original_store(emulator, key, obj, event)
            recorder.stored(obj, event)
            return stored

        def create_object(emulator: Any, resource_: Any, namespace: Any, body: Any) -> dict[str, Any]:
            try:
                return original_create(emulator, resource_, namespace, body)
            except Exception as failure:
                if getattr(failure, "status", None) == 409:
                    recorder.conflicts[(body or {}).get("kind", "?")] += 1
                raise

        emulator_cls._store, emulator_cls.create_object = _store, create_object

    def stored(self, obj: dict[str, Any], event: str) -> None:
        now = time.monotonic()
        kind, meta = obj.get("kind"), obj["metadata"]
        if event == "ADDED":
            self.creations[kind] += 1
        if kind == "FineTuneJob":
            if event == "ADDED":
                self.ftj_stored.setdefault(meta["name"], now)
            elif (obj.get("status") or {}).get("phase") == "Training":
                self.status_training.setdefault(meta["name"], now)
        elif kind == "Job" and event == "ADDED":
            for ref in meta.get("ownerReferences") or []:
                if ref.get("kind") == "FineTuneJob":
                    self.job_stored.setdefault(ref["name"], now)
            if len(self.job_stored) >= self.expected:
                self.all_jobs.set()


def manifest(index: int, namespace: str) -> dict[str, Any]:
    body = copy.deepcopy(EXAMPLE)
    body["metadata"] = {"name": f"ftj-{index:05d}", "namespace": namespace}
    return body


async def create_all(url: str, token: str | None, namespace: str, count: int, concurrency: int,
                     ssl_context: Any = None, rate: float = 0) -> tuple[dict[str, float], list[float], list[str]]:
    """POST count FineTuneJobs, at most `concurrency` in flight and, with a `rate`, the i-th no earlier
    than i / rate seconds after the first (a steady arrival rate); returns the pre-POST timestamps."""
    sent: dict[str, float] = {}
    answered: list[float] = []
    failures: list[str] = []
    pending = iter(range(count))
    bodies = {index: json.dumps(manifest(index, namespace)).encode() for index in range(count)}
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    path = url + FTJ_PATH.format(namespace=namespace)

    connector = aiohttp.TCPConnector(limit=concurrency, ssl=ssl_context if ssl_context is not None else True)
    start = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def worker() -> None:
            for index in pending:
                name = f"ftj-{index:05d}"
                if rate:
                    await asyncio.sleep(start + index / rate - time.monotonic())
                sent[name] = started = time.monotonic()
                try:
                    async with session.post(path, data=bodies[index]) as response:
                        await response.read()
                        if response.status not in (200, 201):
                            failures.append(f"{name}: HTTP {response.status}")
                except (aiohttp.ClientError, asyncio.TimeoutError) as failure:
                    failures.append(f"{name}: {failure!r}")
                answered.append(time.monotonic() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent, answered, failures


async def burst(args: argparse.Namespace, harness: Any, recorder: Recorder) -> dict[str, Any]:
    """Create the FineTuneJobs, wait for their Jobs and statuses; what the cluster saw, as plain data."""
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    sent, answered, failures = await create_all(harness.url, harness.token, args.namespace, args.jobs,
                                                args.concurrency, rate=args.rate)
    out: dict[str, Any] = {"posted_in": time.monotonic() - wall0, "answered": answered, "failures": failures}
    try:
        await asyncio.wait_for(recorder.all_jobs.wait(), args.timeout)
    except asyncio.TimeoutError:
        out["timed_out"] = True
    out["wall"], out["cluster_cpu"] = time.monotonic() - wall0, cpu_seconds() - cpu0
    out["rss_after_burst"] = peak_rss_mib()
    # Status writes follow the Job; give them (and any stray repeated create) time to land.
    deadline = time.monotonic() + args.settle
    while time.monotonic() < deadline and len(recorder.status_training) < args.jobs:
        await asyncio.sleep(0.1)
    await asyncio.sleep(min(2.0, args.settle))
    job, ftj, status = recorder.job_stored, recorder.ftj_stored, recorder.status_training
    out["status_wall"] = max(status.values()) - wall0 if status else float("nan")
    out["client_latency"] = [job[name] - sent[name] for name in sent if name in job]
    out["server_latency"] = [job[name] - ftj[name] for name in ftj if name in job]
    out["status_latency"] = [status[name] - sent[name] for name in sent if name in status]
    out["jobs_seen"] = len(job)
    out["jobs"] = len(harness.list_objects(("batch/v1", "Job"), args.namespace, include_deleted=True))
    out["configmaps"] = len(harness.list_objects(("v1", "ConfigMap"), args.namespace, include_deleted=True,
                                                 label_selector="app.kubernetes.io/managed-by=tuneloop"))
    out["job_deletions"] = sum(None in harness.history(("batch/v1", "Job"), args.namespace, f"ftj-{i:05d}-train")
                               for i in range(args.jobs))
    out["creations"], out["conflicts"] = dict(recorder.creations), dict(recorder.conflicts)
    out["events"] = len(harness.list_objects(("v1", "Event"), args.namespace))
    emulator = harness.emulator
    out["requests_served"] = len(emulator._requests)
    out["object_versions"] = sum(len(obj.history) for obj in emulator.objects.values())
    out["emulator_errors"] = len(emulator.errors)
    return out


async def serve_cluster(args: argparse.Namespace) -> None:
    """--serve-cluster (the child of --split): emulator + client; JSON lines on stdin/stdout."""
    import k8s_emulator

    recorder = Recorder(args.jobs)
    recorder.install()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with k8s_emulator.running_emulator(CRDS, namespaces=(args.namespace,), token=TOKEN) as harness:
        print(json.dumps({"url": harness.url, "token": harness.token, "rss": peak_rss_mib()}), flush=True)
        await reader.readline()  # "go": the operator is ready
        out = await burst(args, harness, recorder)
        out["cluster_rss"] = peak_rss_mib()
        print(json.dumps(out), flush=True)
        await reader.readline()  # "stop": the operator has stopped; end the watches


# --- the operator side ---

class LogCounter(logging.Handler):
    """Counts log records by level and logger, apart for the run and the operator's shutdown."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.phase = "run"
        self.by_level: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.errors_by_logger: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.error_samples: dict[str, list[str]] = collections.defaultdict(list)

    def emit(self, record: logging.LogRecord) -> None:
        self.by_level[self.phase][record.levelname] += 1
        if record.levelno >= logging.ERROR:
            self.errors_by_logger[self.phase][record.name] += 1
            if len(self.error_samples[self.phase]) < 3:
                self.error_samples[self.phase].append(f"{record.name}: {record.getMessage()[:300]}")

    def errors(self, phase: str) -> int:
        return self.errors_by_logger[phase].total()

    def describe(self, phase: str) -> str:
        by_logger = self.errors_by_logger[phase]
        return (f"{by_logger.total()}" + (f" by logger {dict(by_logger)}" if by_logger else "")
                + f"; all records by level {dict(self.by_level[phase])}"
                + "".join(f"\n  e.g. {sample}" for sample in self.error_samples[phase]))


def burst_settings(args: argparse.Namespace) -> Any:
    """tests/k8s_emulator.py's kopf_test_settings(), with timeouts that a burst of requests does not trip.

    Spelled out here so that --split's operator process need not import the emulator. The operator's
    own startup handler then sets the status-based progress/diffbase storages and posting.level INFO.
    """
    import kopf

    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 120  # the harness: 10; kopf resumes from the last resourceVersion
    settings.watching.client_timeout = 150  # the harness: 15
    settings.watching.connect_timeout = 2
    settings.networking.request_timeout = 30  # the harness's 5 s is for tests with a handful of objects
    settings.networking.error_backoffs = [0.1, 0.2, 0.5, 1, 2]  # the harness: [0.1, 0.2, 0.5]
    settings.queueing.exit_timeout = 1
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.queueing.worker_limit = args.worker_limit
    settings.posting.worker_limit = args.posting_worker_limit
    return settings


GC = GcTimer()
LOGS = LogCounter()


def metric(name: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name) or 0.0


def write_kubeconfig(path: Path, url: str, token: str | None) -> Path:
    """As Harness.write_kubeconfig: token auth, plain http to 127.0.0.1."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": url, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "emulator", "user": {"token": token}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator",
                                                       "namespace": "default"}}],
    }))
    return path


@contextlib.asynccontextmanager
async def kopf_operator(registry: Any, settings: Any, namespace: str, timeout: float = 30) -> AsyncIterator[None]:
    """As Harness.kopf_operator, but the operator logs in with its own login handler (KUBECONFIG)."""
    import kopf

    stop_flag, ready_flag = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(kopf.operator(registry=registry, settings=settings, standalone=True,
                                             namespaces=[namespace], stop_flag=stop_flag, ready_flag=ready_flag))
    try:
        ready = asyncio.create_task(ready_flag.wait())
        await asyncio.wait([ready, task], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()
            raise RuntimeError("The operator exited at its start.")
        if not ready_flag.is_set():
            raise TimeoutError(f"The operator was not ready within {timeout}s.")
        yield
    finally:
        stop_flag.set()
        await asyncio.wait_for(task, timeout)


class Operator:
    """Runs the operator against the API at url; measures this process around the burst."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir, self.figures = args, workdir, {}

    async def run(self, url: str, token: str | None, run_burst: Any) -> dict[str, Any]:
        from k8s_emulator import handlers_registry

        args, figures = self.args, self.figures
        os.environ["KUBECONFIG"] = str(write_kubeconfig(self.workdir / "kubeconfig", url, token))
        async with kopf_operator(handlers_registry("tuneloop.handlers"), burst_settings(args), args.namespace):
            await asyncio.sleep(0.5)  # let the watchers finish their initial (empty) listing
            errors0 = metric("tuneloop_reconcile_errors_total")
            seconds0 = metric("tuneloop_reconcile_duration_seconds_sum")
            count0 = metric("tuneloop_reconcile_duration_seconds_count")
            figures["rss_before"], figures["rss_now_before"] = peak_rss_mib(), current_rss_mib()
            baseline = tracemalloc_snapshot() if args.tracemalloc else None
            lag: list[float] = []
            stop_lag = asyncio.Event()
            lag_task = asyncio.create_task(loop_lag(lag, stop_lag))
            cpu0, gc0 = cpu_seconds(), GC.mark()
            cluster = await run_burst()
            # This process's CPU: the operator's alone with --split, else the cluster's too.
            figures["operator_cpu"], figures["gc"] = cpu_seconds() - cpu0, GC.since(gc0)
            stop_lag.set()
            await lag_task
            figures["lag"] = lag
            figures["reconcile_errors"] = metric("tuneloop_reconcile_errors_total") - errors0
            figures["reconciles"] = metric("tuneloop_reconcile_duration_seconds_count") - count0
            figures["reconcile_seconds"] = metric("tuneloop_reconcile_duration_seconds_sum") - seconds0
            if args.steady:  # the timers' load once they are due: FineTuneJobs just sit in Training
                cpu1, count1 = cpu_seconds(), metric("tuneloop_reconcile_duration_seconds_count")
                await asyncio.sleep(args.steady)
                figures["steady_cpu"] = cpu_seconds() - cpu1
                figures["steady_reconciles"] = metric("tuneloop_reconcile_duration_seconds_count") - count1
                figures["reconcile_errors"] = metric("tuneloop_reconcile_errors_total") - errors0
            figures["rss_end"], figures["rss_now_end"] = peak_rss_mib(), current_rss_mib()
            if baseline is not None:
                figures["tracemalloc"] = tracemalloc_growth(baseline)
            LOGS.phase = "shutdown"
        return cluster


def tracemalloc_snapshot() -> Any:
    import tracemalloc

    tracemalloc.reset_peak()
    return tracemalloc.take_snapshot()


def tracemalloc_growth(baseline: Any, limit: int = 15) -> str:
    """The Python memory still held after the burst that was not held before it, by allocating line."""
    import tracemalloc

    current, peak = tracemalloc.get_traced_memory()
    stats = tracemalloc.take_snapshot().compare_to(baseline, "lineno")
    growth = sum(stat.size_diff for stat in stats)
    lines = [f"tracemalloc: Python memory traced now {current / 2**20:.1f} MiB (peak during the burst "
             f"{peak / 2**20:.1f} MiB); {growth / 2**20:+.1f} MiB since before the burst, by allocating line:"]
    for stat in sorted(stats, key=lambda stat: -stat.size_diff)[:limit]:
        frame = stat.traceback[0]
        where = "/".join(Path(frame.filename).parts[-2:])
        lines.append(f"  {stat.size_diff / 2**20:+7.2f} MiB {stat.count_diff:+8d} blocks  {where}:{frame.lineno}")
    return "\n".join(lines)


async def in_process(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import k8s_emulator

    recorder = Recorder(args.jobs)
    recorder.install()
    operator = Operator(args, workdir)
    async with k8s_emulator.running_emulator(CRDS, namespaces=(args.namespace,), token=TOKEN) as harness:
        cluster = await operator.run(harness.url, harness.token, lambda: burst(args, harness, recorder))
    return {**cluster, **operator.figures}


async def split(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    child_args = [sys.executable, str(Path(__file__).resolve()), "--serve-cluster", "--jobs", str(args.jobs),
                  "--concurrency", str(args.concurrency), "--namespace", args.namespace,
                  "--timeout", str(args.timeout), "--settle", str(args.settle)]
    child = await asyncio.create_subprocess_exec(*child_args, stdin=asyncio.subprocess.PIPE,
                                                 stdout=asyncio.subprocess.PIPE, limit=2**26)
    assert child.stdin is not None and child.stdout is not None
    try:
        async def answer() -> dict[str, Any]:
            line = await child.stdout.readline()
            if not line:
                raise RuntimeError("the emulator's child process exited (its error is above)")
            return json.loads(line)

        hello = await answer()

        async def run_burst() -> dict[str, Any]:
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            return await answer()

        operator = Operator(args, workdir)
        cluster = await operator.run(hello["url"], hello["token"], run_burst)
        child.stdin.write(b"stop\n")
        await child.stdin.drain()
        await asyncio.wait_for(child.wait(), 30)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    return {**cluster, **operator.figures}


# --- the report ---

# --- against a real kube-apiserver ---

# The operator under tracemalloc: on SIGUSR1 it writes the lines holding the most memory.
TRACED_OPERATOR = """import signal, sys, tracemalloc
tracemalloc.start(8)


def dump(*_):
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    with open({out!r} + ".partial", "w") as out:
        out.write(f"traced: {{sum(s.size for s in snapshot.statistics('filename')) / 2**20:.1f}} MiB\\n")
        for stat in snapshot.statistics("traceback")[:12]:
            out.write(f"{{stat.size / 2**20:7.1f}} MiB {{stat.count:8d}} blocks\\n")
            out.writelines(f"          {{line}}\\n" for line in stat.traceback.format()[-6:])
    import os
    os.replace({out!r} + ".partial", {out!r})


signal.signal(signal.SIGUSR1, dump)
from tuneloop.cli import main
sys.exit(main(sys.argv[1:]))
"""


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_of(operator: Any, server: Any) -> dict[str, float]:
    processes = {"operator": operator.process.pid, **{name: process.pid for name, process in server.processes}}
    return {name: process_cpu_seconds(pid) for name, pid in processes.items()}


async def watch_jobs(server: Any, namespace: str, seen: dict[str, float], ready: asyncio.Event,
                     gaps: list[str]) -> None:
    """Record when each Job's ADDED event reaches the client, on the clock of the POST timestamps.
    A watch the server ends is resumed from its last resourceVersion; where it cannot be (410 Gone),
    a fresh listing stamps the Jobs it finds with the listing's time (late: counted in `gaps`)."""
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    collection = f"{server.url}/apis/batch/v1/namespaces/{namespace}/jobs"

    def stamp(job: dict[str, Any], now: float) -> None:
        seen.setdefault(job["metadata"]["name"].removesuffix("-train"), now)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None), read_bufsize=2**22) as session:
        version = None
        while True:
            if version is None:
                async with session.get(collection, headers=headers, ssl=server.ssl_context) as response:
                    listing = await response.json()
                now = time.monotonic()
                if ready.is_set():
                    gaps.append(f"relisted {len(listing['items'])} Jobs")
                for job in listing["items"]:
                    stamp(job, now)
                version = listing["metadata"]["resourceVersion"]
            url = f"{collection}?watch=1&resourceVersion={version}&timeoutSeconds=3600"
            async with session.get(url, headers=headers, ssl=server.ssl_context) as response:
                ready.set()
                async for line in response.content:
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        version = None  # 410 Gone: the events since `version` are no longer kept
                        break
                    version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] == "ADDED":
                        stamp(event["object"], time.monotonic())


async def real_apiserver(args: argparse.Namespace, workdir: Path) -> bool:
    """The burst against a real kube-apiserver 1.20 + controller manager (tools/build_kube.sh), the
    operator in a process of its own as the chart runs it (its ServiceAccount, its RBAC)."""
    from chart_operator import Operator
    from kube_apiserver import missing_binaries, running_control_plane

    if missing := missing_binaries():
        print(f"no real API server: {', '.join(missing)} missing; run tools/build_kube.sh")
        return False
    crds = [doc for path in sorted((REPO / "crds").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    with running_control_plane(workdir / "control-plane", audit=False, crds=crds) as server:
        server.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tuneloop-system"}}])
        python: tuple[str, ...] = ("-m", "tuneloop.cli")
        if args.tracemalloc:
            (workdir / "traced_operator.py").write_text(TRACED_OPERATOR.format(out=str(workdir / "tracemalloc.txt")))
            python = (str(workdir / "traced_operator.py"),)
        operator = Operator(server, workdir, [args.namespace], reconcile_interval=float(args.interval), python=python)
        try:
            operator.wait_until_live()
            rss_before = operator.peak_rss_mib()
            cpu_before = cpu_of(operator, server)
            seen: dict[str, float] = {}
            gaps: list[str] = []
            ready = asyncio.Event()
            watcher = asyncio.create_task(watch_jobs(server, args.namespace, seen, ready, gaps))
            await ready.wait()
            wall0 = time.monotonic()
            sent, answered, failures = await create_all(server.url, server.admin_token, args.namespace, args.jobs,
                                                        args.concurrency, server.ssl_context, args.rate)
            posted_in = time.monotonic() - wall0
            deadline = time.monotonic() + args.timeout
            while len(seen) < args.jobs - len(failures) and time.monotonic() < deadline:
                operator.alive()
                if watcher.done():
                    watcher.result()  # the watch failed: say why
                await asyncio.sleep(0.2)
            wall = time.monotonic() - wall0
            cpu = {name: seconds - cpu_before[name] for name, seconds in cpu_of(operator, server).items()}
            await asyncio.sleep(min(args.settle, 10))
            rss_end = operator.peak_rss_mib()
            watcher.cancel()
            if args.tracemalloc:
                os.kill(operator.process.pid, signal.SIGUSR1)
                server.wait_for(lambda: (workdir / "tracemalloc.txt").exists(), "the tracemalloc dump", timeout=300)
        finally:
            operator.stop()
        latency = [seen[name] - sent[name] for name in sent if name in seen]
        jobs = server.items(f"/apis/batch/v1/namespaces/{args.namespace}/jobs")
        configmaps = [c for c in server.items(f"/api/v1/namespaces/{args.namespace}/configmaps")
                      if c["metadata"]["name"].startswith("ftj-")]
        log = operator.log.read_text(errors="replace")
        errors = sum(1 for line in log.splitlines() if line.startswith("{")
                     and json.loads(line).get("severity") in ("error", "critical"))  # kopf's JSON log lines

    p99 = percentile(latency, 99) if len(latency) == args.jobs else float("inf")
    print(f"command:      python benchmarks/operator_scale.py --apiserver --jobs {args.jobs}"
          + f" --rate {args.rate:g}" * bool(args.rate))
    print(f"machine:      {os.cpu_count()} CPU(s), load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"python {sys.version.split()[0]}, kopf {version('kopf')}")
    print("setup:        real kube-apiserver + kube-controller-manager 1.20.2 and etcd on 127.0.0.1; "
          "`tuneloop operator` with the chart's arguments and RBAC, in a process of its own")
    print(f"FineTuneJobs:             {args.jobs}, all POSTed after {posted_in:.2f} s "
          f"(POST answered in {spread(answered)})" + (f"; {len(failures)} failed, e.g. {failures[:2]}" * bool(failures)))
    print(f"wall time to last Job:    {wall:.2f} s" + ("  (TIMED OUT)" if len(seen) < args.jobs else ""))
    print(f"create->Job latency:      {spread(latency)}")
    print("  (client's timestamp just before the POST -> the Job's ADDED event on the client's watch)"
          + (f"; the watch had gaps: {gaps}" if gaps else ""))
    print(f"operator peak RSS:        {rss_before:.1f} MiB before the burst, {rss_end:.1f} MiB at the end (VmHWM)")
    print("CPU up to the last Job:   " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in cpu.items())
          + f" (in {wall:.1f} s of wall time)")
    print(f"Jobs, ConfigMaps:         {len(jobs)}, {len(configmaps)}")
    print(f"ERROR log records:        {errors}")
    if args.tracemalloc:
        print(f"\n--- what the operator held at its stop (tracemalloc) ---\n{(workdir / 'tracemalloc.txt').read_text()}")
    checks = {"p99 create->Job < 1 s": p99 < 1.0, "operator peak RSS < 150 MiB": rss_end < 150,
              f"Jobs == ConfigMaps == {args.jobs}": len(jobs) == len(configmaps) == args.jobs,
              "no ERROR log records": errors == 0}
    print()
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    return all(checks.values())


def report(args: argparse.Namespace, result: dict[str, Any], logs: LogCounter, log_file: Path) -> bool:
    n = args.jobs
    client = result["client_latency"]
    p99 = percentile(client, 99) if len(client) == n else float("inf")
    errors = int(result["reconcile_errors"]) + logs.errors("run")
    lag, creations, conflicts = result["lag"], result["creations"], result["conflicts"]
    where = ("split: emulator + client in a child process, operator alone in this one" if args.split
             else "one process: operator, emulator and client share one event loop")
    flags = (f" --concurrency {args.concurrency}" * (args.concurrency != 50)
             + f" --rate {args.rate:g}" * bool(args.rate)
             + f" --worker-limit {args.worker_limit}" * bool(args.worker_limit)
             + f" --interval {args.interval}" * (args.interval != "600")
             + f" --steady {args.steady:g}" * bool(args.steady)
             + " --split" * args.split + " --profile ..." * bool(args.profile))

    print(f"command:      python benchmarks/operator_scale.py --jobs {n}{flags}")
    print(f"machine:      {os.cpu_count()} CPU(s), load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"python {sys.version.split()[0]}, kopf {version('kopf')}, kmock {version('kmock')}, "
          f"aiohttp {version('aiohttp')}")
    print(f"setup:        {where}")
    print(f"settings:     TUNELOOP_RECONCILE_INTERVAL={os.environ['TUNELOOP_RECONCILE_INTERVAL']}, "
          f"queueing.worker_limit={args.worker_limit}, posting.worker_limit={args.posting_worker_limit}, "
          f"{args.concurrency} POSTs in flight, kopf logging as `tuneloop operator` (JSON, INFO) -> {log_file}")
    print()
    print(f"FineTuneJobs:             {n}, all POSTed after {result['posted_in']:.2f} s "
          f"(POST answered in {spread(result['answered'])})")
    if result["failures"]:
        print(f"  POST failures:          {len(result['failures'])}, e.g. {result['failures'][:3]}")
    print(f"wall time to last Job:    {result['wall']:.2f} s"
          + ("  (TIMED OUT: not every FineTuneJob got its Job)" if result.get("timed_out") else "")
          + f"; last status phase=Training at {result['status_wall']:.2f} s")
    print(f"create->Job latency:      {spread(client)}")
    print("  (client's timestamp just before the POST -> the Job stored by the emulator)")
    print(f"stored FTJ->Job latency:  {spread(result['server_latency'])}")
    print(f"create->status Training:  {spread(result['status_latency'])}")
    print(f"operator process CPU:     {result['operator_cpu']:.2f} s during the burst and settling"
          + (" (includes the emulator and the client)" if not args.split else
             f"; cluster process {result['cluster_cpu']:.2f} s up to the last Job"))
    print(f"garbage collector:        {result['gc']} (operator process, same span"
          + (")" if args.split else ", emulator included)"))
    print(f"event-loop lag:           p50 {percentile(lag, 50) * 1000:.0f} ms, "
          f"p99 {percentile(lag, 99) * 1000:.0f} ms, max {max(lag, default=0) * 1000:.0f} ms (operator's loop)")
    reconciles, seconds = result["reconciles"], result["reconcile_seconds"]
    print(f"reconciles:               {reconciles:.0f}, mean {seconds / reconciles * 1000 if reconciles else 0:.0f} ms "
          "wall each (tuneloop_reconcile_duration_seconds, incl. waiting for the API and the loop)")
    print(f"reconcile errors:         {result['reconcile_errors']:.0f} (tuneloop_reconcile_errors_total)")
    print(f"ERROR log records:        {logs.describe('run')}")
    print(f"  at the operator's stop: {logs.describe('shutdown')}")
    print(f"emulator unexpected errs: {result['emulator_errors']}")
    print(f"Jobs:                     {result['jobs']} (incl. deleted; {creations.get('Job', 0)} created, "
          f"{result['job_deletions']} deleted, {conflicts.get('Job', 0)} answered 409 AlreadyExists)")
    print(f"ConfigMaps:               {result['configmaps']} (incl. deleted; "
          f"{creations.get('ConfigMap', 0)} created, {conflicts.get('ConfigMap', 0)} answered 409 AlreadyExists)")
    print(f"k8s Events:               {result['events']}")
    print(f"emulator:                 {result['requests_served']} requests served, "
          f"{result['object_versions']} object versions stored")
    rss = f"{result['rss_before']:.1f} MiB before the burst, "
    if not args.split:
        rss += f"{result['rss_after_burst']:.1f} MiB when the last Job appeared, "
    rss += f"{result['rss_end']:.1f} MiB at the end (current RSS {result['rss_now_end']:.1f} MiB)"
    print(f"peak RSS (ru_maxrss):     {rss}")
    if args.split:
        print(f"  (the operator alone; the emulator + client child peaked at {result['cluster_rss']:.1f} MiB)")
    else:
        print("  (one process: the operator AND the in-memory API emulator AND the client)")
    if args.steady:
        steady, rate = result["steady_reconciles"], result["steady_reconciles"] / args.steady
        print(f"steady state:             {args.steady:.0f} s after the burst, interval {args.interval} s: "
              f"{steady:.0f} timer reconciles ({rate:.1f}/s), operator process CPU {result['steady_cpu']:.2f} s "
              f"({100 * result['steady_cpu'] / args.steady:.0f}% of one core"
              + (", incl. the emulator)" if not args.split else ")"))
    if result.get("tracemalloc"):
        print(result["tracemalloc"])
    print()
    checks = {
        "p99 create->Job < 2 s": p99 < 2.0,
        "no reconcile errors, no ERROR log records": errors == 0,
        "peak RSS < 200 MiB": result["rss_end"] < 200,
        f"Jobs == ConfigMaps == {n}, each created once": result["jobs"] == n == result["configmaps"]
        and creations.get("Job") == n == creations.get("ConfigMap"),
        "every FineTuneJob got its Job": result["jobs_seen"] == n,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    return all(checks.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="FineTuneJobs to create (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=50, help="POSTs in flight (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=0,
                        help="FineTuneJobs created per second, evenly spaced (default: a burst, as fast as it goes)")
    parser.add_argument("--worker-limit", type=int, default=None,
                        help="kopf settings.queueing.worker_limit (default: kopf's, unlimited)")
    parser.add_argument("--posting-worker-limit", type=int, default=None,
                        help="kopf settings.posting.worker_limit (default: kopf's, unlimited)")
    parser.add_argument("--interval", default="600",
                        help="TUNELOOP_RECONCILE_INTERVAL: keeps timers out of the burst (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=600, help="give up waiting for the Jobs after this (s)")
    parser.add_argument("--settle", type=float, default=30,
                        help="after the last Job, wait up to this for the status writes (s) (default: %(default)s)")
    parser.add_argument("--steady", type=float, default=0,
                        help="then keep running this long (s) and measure the timers' load (use with --interval)")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--split", action="store_true",
                        help="run the emulator and the client in a child process; measure the operator alone")
    parser.add_argument("--profile", type=Path, help="run under cProfile; write pstats here and print the top")
    parser.add_argument("--tracemalloc", action="store_true", help="show where the Python memory is (slow)")
    parser.add_argument("--log-file", type=Path, help="where the operator's log goes (default: a temp file)")
    parser.add_argument("--apiserver", action="store_true",
                        help="against a real kube-apiserver (tools/build_kube.sh), the operator as the chart runs it")
    parser.add_argument("--serve-cluster", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.apiserver:
        os.environ["TUNELOOP_RECONCILE_INTERVAL"] = str(args.interval)
        return 0 if asyncio.run(real_apiserver(args, Path(tempfile.mkdtemp(prefix="operator-scale-")))) else 1

    if args.serve_cluster:
        asyncio.run(serve_cluster(args))
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="operator-scale-"))
    config = workdir / "config.yaml"
    # Registering needs an MLflow URI in the config; nothing contacts it during the burst (no timer fires).
    config.write_text(yaml.safe_dump({"catalog": CATALOG, "mlflowTrackingUri": "http://mlflow.invalid:5000"}))
    os.environ["TUNELOOP_CONFIG"] = str(config)
    os.environ["TUNELOOP_RECONCILE_INTERVAL"] = str(args.interval)

    # Log as `tuneloop operator` does (kopf.configure: root logger at INFO, JSON lines), into a file; count.
    import kopf

    log_file = args.log_file or workdir / "operator.log"
    kopf.configure(log_format=kopf.LogFormat.JSON, verbose=False)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stderr:
            handler.setStream(open(log_file, "w"))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # the emulator's access log: no operator cost
    logging.getLogger().addHandler(LOGS)
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()

    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    result = asyncio.run((split if args.split else in_process)(args, workdir))
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    ok = report(args, result, LOGS, log_file)
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).strip_dirs().sort_stats("tottime").print_stats(25)
        print(f"\n--- cProfile of this process, top 25 by own time (whole run, incl. setup) ---\n{text.getvalue()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
