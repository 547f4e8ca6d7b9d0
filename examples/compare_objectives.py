"""One snapshot of the reviewers' feedback, two candidates: `sft` and `sft-then-dpo`, each judged against
the same champion on the same test rows.

After `make example` (the champion) and examples/review_champion.py (its corrections and verdicts in the
feedback service, see docs/feedback-loop.md):

    TUNELOOP_FEEDBACK_TOKEN=... python examples/compare_objectives.py --workdir tuneloop-work \
        --url http://127.0.0.1:8088

1. One snapshot of the feedback, by the schedule's own snapshot workload: SFT rows (the corrections),
   preference pairs (chosen = correction, rejected = the champion's answer) and KTO rows.
2. One FineTuneJob per objective from examples/finetuneschedule.yaml's template, built as a schedule run
   builds it (the snapshot as the dataset, the base dataset replayed), with `registry.promotion: manual`
   so that the champion stays the baseline of both. The same rows and seed give both the same split.
3. Each runs with `tuneloop run --local`; then the two side by side: each against the champion on the
   same test and regression rows, and the two against each other on the test rows (exact McNemar on
   the rows where exactly one of them is right).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parent
OBJECTIVES = ("sft", "sft-then-dpo")
HEADLINE = ("exactMatch", "labelAccuracy", "fieldAccuracy")


def take_snapshot(schedule: Any, url: str, folder: Path) -> dict[str, Any]:
    """The snapshot workload, run as a schedule runs it; its result (files, counts)."""
    from tuneloop.api.workloads import SnapshotWorkload

    dataset = schedule.spec.job_template.spec.dataset
    workload = SnapshotWorkload(feedback_url=url, model=schedule.spec.feedback.model, output_dir=str(folder),
                                cleaning=dataset.cleaning, system_prompt=dataset.system_prompt)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "workload.json").write_text(workload.model_dump_json(by_alias=True, indent=2), encoding="utf-8")
    process = subprocess.run([sys.executable, "-m", "tuneloop_trainer.snapshot", "--spec", str(folder / "workload.json"),
                              "--result", str(folder / "result.json")])
    result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    if process.returncode != 0 or not result.get("succeeded"):
        raise SystemExit(f"the snapshot failed: {result.get('message')}")
    if not result.get("pairs"):
        raise SystemExit(f"the snapshot has no preference pairs ({result.get('message')}): post corrections first "
                         "(examples/review_champion.py)")
    return result


def job_manifests(schedule: Any, snapshot: dict[str, Any], folder: Path) -> dict[str, Path]:
    """A FineTuneJob per objective, as the schedule's run would create it, champion kept as the baseline."""
    from tuneloop.reconcile.finetuneschedule import job_manifest, preference_data, snapshot_info

    info = snapshot_info(snapshot, snapshot["upToId"])
    manifests = {}
    for objective in OBJECTIVES:
        spec = schedule.spec.model_copy(deep=True)
        spec.job_template.spec.method.objective = objective
        spec.job_template.spec.registry.promotion = "manual"  # the champion stays the baseline of both
        manifest = job_manifest(f"{schedule.spec.feedback.model}-{objective}", "default", schedule.metadata.name,
                                None, spec, info.uri, datetime.now(timezone.utc), preference_data(objective, info))
        path = folder / f"{objective}.yaml"
        path.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
        manifests[objective] = path
    return manifests


def run_job(manifest: Path, workdir: Path, log: Path) -> None:
    """`tuneloop run --local` of one manifest, its report in `log`."""
    with log.open("w", encoding="utf-8") as output:
        process = subprocess.run([sys.executable, "-m", "tuneloop.cli", "run", str(manifest), "--local",
                                  "--workdir", str(workdir)], stdout=output, stderr=subprocess.STDOUT)
    if process.returncode != 0:
        raise SystemExit(f"{manifest.name}: tuneloop run exited with {process.returncode}; see {log}")


def finished_status(workdir: Path, name: str) -> dict[str, Any]:
    """The newest run's status of job `name` in the work folder."""
    statuses = sorted((workdir / name).glob("*/status.json"), key=lambda path: path.stat().st_mtime)
    if not statuses:
        raise SystemExit(f"no run of {name} in {workdir}: run this script without --print-only first")
    return json.loads(statuses[-1].read_text(encoding="utf-8"))


def minutes(status: dict[str, Any]) -> str:
    from tuneloop.api.common import parse_time

    started, ended = (parse_time(status[key]) for key in ("startTime", "completionTime"))
    return f"{(ended - started).total_seconds() / 60:.1f} min"


def records_of_test_set(status: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The evaluation's per-row records of the test set, by row index."""
    from tuneloop.registry.evaluation import read_records
    from tuneloop.registry.run_report import local_records_path

    path = local_records_path(status["evaluation"]["recordsUri"])
    return {row["index"]: row for row in read_records(path) if row["set"] == "test"}


def head_to_head(first: dict[int, dict[str, Any]], second: dict[int, dict[str, Any]], metric: str) -> str:
    """Exact McNemar between two candidates on the same test rows."""
    from scipy.stats import binomtest

    if first.keys() != second.keys() or any(first[i]["reference"] != second[i]["reference"] for i in first):
        return "not comparable: the two evaluations did not score the same test rows"
    only_first = sum(first[i]["candidate"]["scores"][metric] == 1 and second[i]["candidate"]["scores"][metric] != 1
                     for i in first)
    only_second = sum(second[i]["candidate"]["scores"][metric] == 1 and first[i]["candidate"]["scores"][metric] != 1
                      for i in first)
    discordant = only_first + only_second
    p = binomtest(only_second, discordant, 0.5).pvalue if discordant else 1.0
    return (f"{metric} on the same {len(first)} test rows: {OBJECTIVES[1]} alone right on {only_second}, "
            f"{OBJECTIVES[0]} alone right on {only_first}; exact McNemar p = {p:.3f}")


def score(comparison: dict[str, Any] | None, side: str, metric: str) -> str:
    value = (comparison or {}).get(side, {}).get(metric)
    return "-" if value is None else f"{value['value']:.3f}"


def difference(comparison: dict[str, Any] | None, metric: str) -> str:
    value = (comparison or {}).get("difference", {}).get(metric)
    return "-" if value is None else f"{value['value']:+.3f} [{value['low']:+.3f}, {value['high']:+.3f}]"


def print_comparison(statuses: dict[str, dict[str, Any]]) -> None:
    first = statuses[OBJECTIVES[0]]["evaluation"]
    print(f"\nBoth against champion (version {first.get('baselineVersion')}) on the same "
          f"{first['test']['examples']} test rows and {(first.get('regression') or {}).get('examples', 0)} "
          "regression rows (the champion's own test rows):\n")
    width = 36
    print(f"  {'':<28}{'champion':>10}" + "".join(f"{objective:>{width}}" for objective in OBJECTIVES))
    for set_name in ("test", "regression"):
        for metric in HEADLINE:
            comparisons = {objective: statuses[objective]["evaluation"].get(set_name) for objective in OBJECTIVES}
            if all(metric not in (comparison or {}).get("candidate", {}) for comparison in comparisons.values()):
                continue
            champion = score(comparisons[OBJECTIVES[0]], "baseline", metric)
            cells = [f"{score(comparisons[o], 'candidate', metric)} ({difference(comparisons[o], metric)})"
                     for o in OBJECTIVES]
            print(f"  {set_name + ' ' + metric:<28}{champion:>10}" + "".join(f"{cell:>{width}}" for cell in cells))
    for label, cell in (
        ("regression rows regressed", lambda status: str(status["evaluation"].get("regressedRows", "-"))),
        ("gate", lambda status: "PASSED" if status["evaluation"]["gate"]["passed"] else "FAILED"),
        ("validation loss", lambda status: status["training"]["validationLoss"]),
        ("training steps", lambda status: str(status["training"]["steps"])),
        ("wall time", minutes),
    ):
        print(f"  {label:<28}{'':>10}" + "".join(f"{cell(statuses[o]):>{width}}" for o in OBJECTIVES))
    print()
    for objective in OBJECTIVES:
        preference = statuses[objective]["training"].get("preference")
        if preference:
            from tuneloop.api.finetunejob import PreferenceResults

            print(f"  {objective}: {PreferenceResults.model_validate(preference).summary()}")
        gate = statuses[objective]["evaluation"]["gate"]
        print(f"  {objective} gate: {gate['message']}")
    records = {objective: records_of_test_set(statuses[objective]) for objective in OBJECTIVES}
    print(f"\n  head to head: {head_to_head(records[OBJECTIVES[0]], records[OBJECTIVES[1]], 'exactMatch')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("tuneloop-work"), help="the example's work folder")
    parser.add_argument("--url", default="http://127.0.0.1:8088", help="the feedback service")
    parser.add_argument("--schedule", type=Path, default=EXAMPLES / "finetuneschedule.yaml")
    parser.add_argument("--print-only", action="store_true", help="print the comparison of the finished runs again")
    args = parser.parse_args()
    if not args.print_only and not os.environ.get("TUNELOOP_FEEDBACK_TOKEN"):
        print("set TUNELOOP_FEEDBACK_TOKEN to the feedback service's token", file=sys.stderr)
        return 2
    from tuneloop.api.finetuneschedule import parse_manifest

    schedule = parse_manifest(yaml.safe_load(args.schedule.read_text(encoding="utf-8")))
    base = schedule.spec.job_template.spec.dataset
    base.uri = str((args.schedule.resolve().parent / base.uri).resolve())
    workdir = args.workdir.resolve()
    folder = workdir / "compare-objectives"
    names = {objective: f"{schedule.spec.feedback.model}-{objective}" for objective in OBJECTIVES}
    if not args.print_only:
        snapshot = take_snapshot(schedule, args.url, folder / "snapshot")
        print(f"snapshot: {snapshot['message']}")
        for objective, manifest in job_manifests(schedule, snapshot, folder).items():
            print(f"{objective}: tuneloop run {manifest} --local (report in {folder / (objective + '.log')})",
                  flush=True)
            run_job(manifest, workdir, folder / f"{objective}.log")
    print_comparison({objective: finished_status(workdir, name) for objective, name in names.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
