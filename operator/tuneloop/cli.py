"""The `tuneloop` command.

    tuneloop run FILE --local     run a FineTuneJob manifest to the end on this machine
                                  (a FineTuneSchedule: --once, one cycle now)
    tuneloop validate FILE...     check manifests; say what is wrong and where (--data: the datasets too)
    tuneloop crds                 print the CustomResourceDefinitions
    tuneloop promote FILE --version V | --from-alias A [--commit]
                                  pin a ModelDeployment's adapter version in a Git working tree
    tuneloop rollout promote|abort|retry|status NAME [-n NS]
                                  manual control of a ModelDeployment's blue-green rollout
    tuneloop feedback serve       the feedback service (corrections in, snapshots out)
    tuneloop images [--config FILE] [--registry REG]
                                  the images to mirror for an air-gapped cluster, one a line
    tuneloop operator             run the Kubernetes operator (kopf)
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

from tuneloop.api import finetuneschedule, modeldeployment
from tuneloop.api.common import SpecError
from tuneloop.api.finetunejob import KIND as FINETUNEJOB, FineTuneJob, FineTuneJobStatus, parse_manifest
from tuneloop.manifest_files import ManifestError, load_documents, manifest_files
from tuneloop.reconcile.finetunejob import check_context

KNOWN_KINDS = (FINETUNEJOB, modeldeployment.KIND, finetuneschedule.KIND)


def describe(document: dict[str, Any]) -> str:
    metadata = document.get("metadata")
    name = metadata.get("name", "<no name>") if isinstance(metadata, dict) else "<no name>"
    return f"{document.get('kind', '<no kind>')}/{name}"


def validate_document(document: dict[str, Any], local: bool) -> list[str]:
    kind = document.get("kind")
    if kind not in KNOWN_KINDS:
        return [f"kind: {kind!r} is not a Tuneloop kind (known: {', '.join(KNOWN_KINDS)})"]
    if kind in (modeldeployment.KIND, finetuneschedule.KIND):
        try:
            (modeldeployment if kind == modeldeployment.KIND else finetuneschedule).parse_manifest(document)
        except SpecError as error:
            return error.problems
        return []
    try:
        job = parse_manifest(document)
    except SpecError as error:
        return error.problems
    if local:
        from tuneloop.runtime.local import LOCAL_CONTEXT

        return check_context(job.spec, LOCAL_CONTEXT)
    return []


LISTED_BAD_ROWS = 50


def as_finetunejob(document: dict[str, Any]) -> dict[str, Any]:
    """A FineTuneJob as is; a FineTuneSchedule as the FineTuneJob its runs start from (the template's
    base dataset, which every run replays)."""
    if document.get("kind") != finetuneschedule.KIND:
        return document
    return {"apiVersion": document["apiVersion"], "kind": FINETUNEJOB,
            "metadata": {"name": document["metadata"]["name"]}, "spec": document["spec"]["jobTemplate"]["spec"]}


def data_check(path: Path, document: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(report lines, problems) for a FineTuneJob's dataset, read as its trainer would read it (local
    paths relative to the manifest, the base model's tokenizer), on this machine's CPU."""
    import tempfile

    from tuneloop.catalog import CatalogError
    from tuneloop.runtime.local import LocalRuntime

    try:
        from tuneloop.workload_data.chat import load_tokenizer
        from tuneloop.workload_data.rows import BadRows, DataError
        from tuneloop_trainer.data_report import data_report
    except ImportError as error:
        return [], [f"--data needs the trainer package (pip install -e trainer-image): {error}"]
    job = parse_manifest(document)
    logging.getLogger("tuneloop_trainer").setLevel(logging.ERROR)  # the report says it all
    with tempfile.TemporaryDirectory(prefix="tuneloop-validate-") as work:
        runtime = LocalRuntime(workdir=Path(work), manifest_dir=path.resolve().parent)
        try:
            workload = runtime.trainer_workload(job, Path(work))
            report = data_report(workload, load_tokenizer(workload.model_path),
                                 world_size=job.spec.resources.training_processes)
        except BadRows as error:
            listed = error.problems[:LISTED_BAD_ROWS]
            rest = len(error.problems) - len(listed)
            return [], [f"{len(error.problems):,} bad rows of {error.rows:,}" + (f" (the first {len(listed)} "
                        "below)" if rest else ""), *listed] + ([f"... and {rest:,} more"] if rest else [])
        except (DataError, CatalogError, ValueError, OSError) as error:
            return [], [str(error)]
    return report.lines(), []


def command_validate(args: argparse.Namespace) -> int:
    failed = False
    paths = []
    for given in args.files:
        try:
            paths += manifest_files(given, args.recursive)
        except ManifestError as error:
            print(error, file=sys.stderr)
            failed = True
    for path in paths:
        try:
            documents = load_documents(path)
        except ManifestError as error:
            print(error, file=sys.stderr)
            failed = True
            continue
        for document in documents:
            problems = validate_document(document, args.local or args.data)
            report: list[str] = []
            if not problems and args.data and document.get("kind") in (FINETUNEJOB, finetuneschedule.KIND):
                report, data_problems = data_check(path, as_finetunejob(document))
                problems = [f"data: {problem}" for problem in data_problems]
            if problems:
                failed = True
                for problem in problems:
                    print(f"{path}: {describe(document)}: {problem}", file=sys.stderr)
            else:
                print(f"{path}: {describe(document)}: valid")
                for line in report:
                    print(f"  {line}")
    return 1 if failed else 0


def load_job(path: Path) -> FineTuneJob:
    jobs = [doc for doc in load_documents(path) if doc.get("kind") == FINETUNEJOB]
    if len(jobs) != 1:
        raise ManifestError(f"{path}: expected exactly one FineTuneJob, found {len(jobs)}")
    problems = validate_document(jobs[0], local=True)
    if problems:
        raise ManifestError("\n".join(f"{path}: {describe(jobs[0])}: {problem}" for problem in problems))
    return parse_manifest(jobs[0])


def print_report(job: FineTuneJob, status: FineTuneJobStatus, result_previews: list[dict[str, Any]]) -> None:
    training, dataset, cleaning = status.training, status.dataset, status.cleaning
    print()
    print(f"FineTuneJob {job.metadata.name}: {status.phase}")
    if dataset:
        print(f"  data       {dataset.rows} rows ({dataset.format}): {dataset.train_rows} train, "
              f"{dataset.hold_out_rows} hold-out; sha256 {dataset.sha256[:16]}")
    if cleaning:
        removed = {"exact duplicates": cleaning.exact_duplicates, "near duplicates": cleaning.near_duplicates,
                   "too short": cleaning.too_short, "too long": cleaning.too_long}
        redacted = ", ".join(f"{count} {kind}" for kind, count in cleaning.pii_redacted.items()) or "none"
        print(f"  cleaning   {cleaning.rows_in} -> {cleaning.rows_out} rows; normalised {cleaning.normalized}; "
              + ", ".join(f"{label} {count}" for label, count in removed.items()) + f"; PII redacted: {redacted}")
    if training:
        change = (training.hold_out_loss_after - training.hold_out_loss_before) / training.hold_out_loss_before
        print(f"  hold-out   loss {training.hold_out_loss_before:.4f} -> {training.hold_out_loss_after:.4f} "
              f"({change:+.0%})")
        print(f"  training   {training.steps} steps, final train loss {training.train_loss:.4f}, "
              f"{training.tokens_per_second:.0f} tokens/s, {training.seconds:.0f}s in all")
        if training.resumed_from_step:
            print(f"  resumed    from the checkpoint at step {training.resumed_from_step}")
        if training.stopped_early:
            print(f"  stopped    early; the output is the best checkpoint, step {training.best_step}")
        print(f"  adapter    {training.adapter_uri}")
        if training.merged_model_uri:
            print(f"  merged     {training.merged_model_uri}")
    for number, preview in enumerate(result_previews, start=1):
        print(f"\n  hold-out example {number}")
        prompt = textwrap.fill(preview["prompt"], 96, subsequent_indent=" " * 13)
        print(f"    {'prompt':<9}{prompt}")
        for label, key in (("expected", "reference"), ("base", "base"), ("tuned", "tuned")):
            answer = " ".join(preview[key].split())
            answer = answer if len(answer) <= 96 else answer[:93] + "..."
            mark = "   (exact match)" if key != "reference" and preview[key].strip() == preview["reference"].strip() else ""
            print(f"    {label:<9}{answer or '(empty)'}{mark}")
    if status.phase == "Failed":
        print(f"  reason     {status.message}")


def print_evaluation(job: FineTuneJob, status: FineTuneJobStatus) -> None:
    evaluation, registry = status.evaluation, status.registry
    if evaluation:
        baseline = evaluation.baseline + (f" v{evaluation.baseline_version}" if evaluation.baseline_version else "")
        hold_out = evaluation.hold_out
        confidence = job.spec.evaluation.bootstrap.confidence
        print(f"\n  evaluation on {hold_out.examples} hold-out examples, {confidence:.0%} bootstrap intervals; "
              f"baseline: {baseline}")
        print(f"    {'metric':<15}{'baseline':<24}{'candidate':<24}{'candidate - baseline'}")
        for metric, candidate in hold_out.candidate.items():
            base, difference = hold_out.baseline.get(metric), hold_out.difference.get(metric)
            print(f"    {metric:<15}{_interval(base):<24}{_interval(candidate):<24}{_interval(difference, signed=True)}")
        judge = evaluation.judge
        if not judge.configured:
            print("    judge          not configured (spec.evaluation.judge): gated on the other metrics")
        else:
            print(f"    judge          {judge.model}: {judge.judged} judged, {judge.unparseable} unparseable; "
                  f"pairwise {judge.wins} wins, {judge.ties} ties, {judge.losses} losses")
        if evaluation.general:
            general = evaluation.general
            print(f"    general set    {general.examples} examples, rougeL candidate - baseline "
                  f"{_interval(general.difference.get('rougeL'), signed=True)}")
        if evaluation.gate:
            print(f"  gate       {'PASSED' if evaluation.gate.passed else 'FAILED'}")
            for check in evaluation.gate.checks:
                print(f"    {check}")
        if evaluation.records_uri:
            print(f"  records    {evaluation.records_uri}")
    if registry:
        aliases = ", ".join(registry.aliases) or "none (nothing promoted)"
        print(f"  registered {registry.uri} (model {registry.model_name}, version {registry.version}; "
              f"aliases: {aliases})")


def _interval(score: Any, signed: bool = False) -> str:
    if score is None:
        return "-"
    form = "+.3f" if signed else ".3f"
    return f"{score.value:{form}} [{score.low:{form}}, {score.high:{form}}]"


def command_run(args: argparse.Namespace) -> int:
    if not args.local:
        print("tuneloop run: only --local is supported here; on a cluster, kubectl apply the manifest",
              file=sys.stderr)
        return 2
    from tuneloop.catalog import CatalogError
    from tuneloop.runtime.local import LocalRuntime, local_mlflow, prepare_tracking

    try:
        kinds = {document.get("kind") for document in load_documents(args.file)}
        if finetuneschedule.KIND in kinds:
            return run_schedule_once(args)
        job = load_job(args.file)
    except ManifestError as error:
        print(error, file=sys.stderr)
        return 2

    def on_event(event: Any) -> None:
        print(f"[{event.type}] {event.reason}: {event.message}", flush=True)

    workdir = args.workdir.resolve()
    tracking_uri, artifact_uri = args.tracking_uri, None
    if not tracking_uri:
        tracking_uri, artifact_uri = local_mlflow(workdir)
        (workdir / "mlflow").mkdir(parents=True, exist_ok=True)
    runtime = LocalRuntime(workdir=workdir, manifest_dir=args.file.resolve().parent,
                           on_event=on_event, tracking_uri=tracking_uri)
    if args.fresh:
        import shutil

        shutil.rmtree(runtime.job_dir(job), ignore_errors=True)
    try:
        prepare_tracking(tracking_uri, artifact_uri)
    except Exception as error:  # MLflow's errors have no common base worth naming here
        print(f"MLflow at {tracking_uri} cannot be used: {error}", file=sys.stderr)
        return 1
    try:
        status = runtime.run(job)
    except CatalogError as error:
        print(f"{args.file}: spec.baseModel: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to pick up where it stopped", file=sys.stderr)
        return 130
    result = runtime.read_result(job, "train") or {}
    print_report(job, status, result.get("previews", []))
    print_evaluation(job, status)
    print(f"\n  work folder {runtime.job_dir(job)}")
    if artifact_uri:
        print(f"  MLflow UI   mlflow ui --backend-store-uri {tracking_uri} --default-artifact-root {artifact_uri}")
    return 0 if status.phase == "Succeeded" else 1


def run_schedule_once(args: argparse.Namespace) -> int:
    """One cycle of a FineTuneSchedule, now: snapshot the new corrections, train, judge, register."""
    from tuneloop.runtime.local import LocalRuntime, local_mlflow, prepare_tracking
    from tuneloop.runtime.local_schedule import LocalSchedule

    if not args.once:
        print(f"{args.file}: a FineTuneSchedule runs locally one cycle at a time: add --once "
              "(on a cluster the operator keeps its schedule)", file=sys.stderr)
        return 2
    schedules = [doc for doc in load_documents(args.file) if doc.get("kind") == finetuneschedule.KIND]
    problems = validate_document(schedules[0], local=False) if len(schedules) == 1 else [
        f"expected exactly one FineTuneSchedule, found {len(schedules)}"]
    if problems:
        for problem in problems:
            print(f"{args.file}: {problem}", file=sys.stderr)
        return 2
    schedule = finetuneschedule.parse_manifest(schedules[0])
    workdir = args.workdir.resolve()
    tracking_uri, artifact_uri = args.tracking_uri, None
    if not tracking_uri:
        tracking_uri, artifact_uri = local_mlflow(workdir)
        (workdir / "mlflow").mkdir(parents=True, exist_ok=True)
    prepare_tracking(tracking_uri, artifact_uri)
    runtime = LocalRuntime(workdir=workdir, manifest_dir=args.file.resolve().parent,
                           on_event=lambda event: print(f"[{event.type}] {event.reason}: {event.message}", flush=True),
                           tracking_uri=tracking_uri)
    cycle = LocalSchedule(schedule, runtime, runtime.on_event)
    try:
        outcome = cycle.run_once()
    except RuntimeError as error:
        print(f"{args.file}: {error}", file=sys.stderr)
        return 1
    if outcome.job is not None and outcome.job_status is not None:
        result = runtime.read_result(outcome.job, "train") or {}
        print_report(outcome.job, outcome.job_status, result.get("previews", []))
        print_evaluation(outcome.job, outcome.job_status)
    run = outcome.run
    print(f"\nFineTuneSchedule {schedule.metadata.name}: {run.outcome}: {run.message}")
    if run.snapshot and run.snapshot.sha256:
        print(f"  snapshot   {run.snapshot.rows} corrections, rows {run.snapshot.after_id + 1}..{run.snapshot.up_to_id},"
              f" sha256 {run.snapshot.sha256[:16]} ({run.snapshot.uri})")
    if run.score is not None:
        print(f"  on the corrected cases: new version {run.score:.3f} vs champion {run.baseline_score:.3f}"
              if run.baseline_score is not None else f"  on the corrected cases: new version {run.score:.3f}")
    print(f"  schedule status {cycle.status_path}")
    return 1 if run.outcome == "Failed" else 0


def command_promote(args: argparse.Namespace) -> int:
    """Pin a ModelDeployment's adapter version in a manifest file (GitOps); optionally commit it on a branch."""
    from tuneloop.gitops import GitOpsError, adapter_name, commit_on_branch, pin_version, resolve_alias

    try:
        version = args.version
        if args.from_alias:
            if not args.tracking_uri:
                print("--from-alias needs --tracking-uri (or MLFLOW_TRACKING_URI)", file=sys.stderr)
                return 2
            model = args.model or adapter_name(args.file, name=args.name)
            version = resolve_alias(args.tracking_uri, model, args.from_alias)
            print(f"{model}@{args.from_alias} is version {version}")
        change = pin_version(args.file, version, name=args.name)
        print(change.describe())
        if args.commit:
            if not change.changed:
                print("nothing to commit: the manifest already pins this version")
                return 0
            branch = args.branch or f"promote/{change.name}-{change.new}"
            message = args.message or f"Promote {change.name} to adapter version {change.new}"
            commit = commit_on_branch(args.file.resolve().parent, [args.file.resolve()], branch, message)
            print(f"committed {commit[:12]} on branch {branch}")
    except GitOpsError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def command_crds(args: argparse.Namespace) -> int:
    from tuneloop.api.crd import render

    print(render(all_crds()), end="")
    return 0


def all_crds() -> list:
    from tuneloop.api.finetunejob import CRD as FINETUNEJOB_CRD
    from tuneloop.api.finetuneschedule import CRD as FINETUNESCHEDULE_CRD
    from tuneloop.api.modeldeployment import CRD as MODELDEPLOYMENT_CRD

    return [FINETUNEJOB_CRD, MODELDEPLOYMENT_CRD, FINETUNESCHEDULE_CRD]


def command_operator(args: argparse.Namespace) -> int:
    """Run the operator (kopf) until stopped; handlers live in tuneloop.handlers."""
    import kopf
    from prometheus_client import start_http_server

    from tuneloop import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
                   verbose=args.verbose)
    if args.metrics_port:
        start_http_server(args.metrics_port)
    settings = kopf.OperatorSettings()
    # Watching named namespaces needs no cluster-wide reads: kopf then neither lists namespaces
    # nor watches CustomResourceDefinitions, so namespaced Roles are all the operator is granted.
    settings.scanning.disabled = bool(args.namespace)
    kopf.run(
        settings=settings,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.standalone,
        # A peering name makes kopf's peering mandatory, and a standalone operator looks for no peering
        # object: with both it would wait for ever.
        peering_name=None if args.standalone else args.peering_name,
        priority=args.priority if args.priority is not None else random.randint(1, 1_000_000),
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
    )
    return 0


def command_rollout(args: argparse.Namespace) -> int:
    from tuneloop.runtime.rollout_control import RolloutControlError, run

    try:
        print(run(args.verb, args.name, args.namespace))
    except RolloutControlError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def command_images(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from tuneloop.config import load_config
    from tuneloop.images import check_registry, image_list

    registry = None
    if args.registry is not None:
        try:
            registry = check_registry(args.registry)
        except ValueError as error:
            print(error, file=sys.stderr)
            return 2
    try:
        config = load_config(args.config)
    except (OSError, yaml.YAMLError, ValidationError) as error:
        print(f"{args.config or os.environ.get('TUNELOOP_CONFIG')}: {error}", file=sys.stderr)
        return 2
    print("\n".join(image_list(config, registry)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneloop", description="Fine-tune and ship private LLMs on Kubernetes.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a FineTuneJob manifest")
    run.add_argument("file", type=Path)
    run.add_argument("--local", action="store_true", help="run on this machine with subprocesses")
    run.add_argument("--workdir", type=Path, default=Path("tuneloop-work"), help="work folder (default: %(default)s)")
    run.add_argument("--fresh", action="store_true", help="discard an earlier run of the same spec")
    run.add_argument("--once", action="store_true",
                     help="a FineTuneSchedule: run one cycle now (snapshot, train, evaluate, register)")
    run.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                     help="MLflow tracking URI for training metrics (default: $MLFLOW_TRACKING_URI)")
    run.set_defaults(handler=command_run)

    validate = commands.add_parser("validate", help="check manifests")
    validate.add_argument("files", type=Path, nargs="+",
                          help="manifest files, or folders of .yaml/.yml/.json files (as kubectl apply -f)")
    validate.add_argument("-R", "--recursive", action="store_true", help="also read the folders below a folder")
    validate.add_argument("--local", action="store_true", help="also check that the job can run locally")
    validate.add_argument("--data", action="store_true",
                          help="also read every row of each FineTuneJob's (and schedule template's) dataset as "
                               "its trainer would (CPU, the base model's tokenizer, no weights): bad rows, token "
                               "lengths, truncation, steps")
    validate.set_defaults(handler=command_validate)

    operator = commands.add_parser("operator", help="run the Kubernetes operator")
    operator.add_argument("--namespace", action="append", default=[],
                          help="watch only this namespace (repeatable); default: the whole cluster")
    operator.add_argument("--standalone", action="store_true",
                          help="no leader election (one replica); default: kopf peering elects one active replica")
    operator.add_argument("--peering-name", default="tuneloop", help="kopf peering object shared by the replicas")
    operator.add_argument("--priority", type=int, default=None,
                          help="peering priority of this replica (default: random, so that replicas differ and "
                               "exactly one is active: kopf pauses all but the highest)")
    operator.add_argument("--health-port", type=int, default=8080, help="liveness endpoint /healthz (0: off)")
    operator.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics (0: off)")
    operator.add_argument("--log-format", choices=("json", "text"), default="json")
    operator.add_argument("--verbose", action="store_true")
    operator.set_defaults(handler=command_operator)

    promote = commands.add_parser("promote", help="pin a ModelDeployment's adapter version in a manifest (GitOps)")
    promote.add_argument("file", type=Path, help="ModelDeployment manifest in a Git working tree")
    source = promote.add_mutually_exclusive_group(required=True)
    source.add_argument("--version", help="the MLflow model version to pin, e.g. 7")
    source.add_argument("--from-alias", metavar="ALIAS", help="pin the version this MLflow alias points at now")
    promote.add_argument("--name", help="the ModelDeployment to edit when the file holds several")
    promote.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                         help="MLflow tracking URI for --from-alias (default: $MLFLOW_TRACKING_URI)")
    promote.add_argument("--model",
                         help="MLflow registered model for --from-alias (default: the manifest's spec.adapter.name)")
    promote.add_argument("--commit", action="store_true", help="commit the file on a branch")
    promote.add_argument("--branch", help="branch for --commit (default: promote/<name>-<version>)")
    promote.add_argument("--message", help="commit message (default: Promote <name> to adapter version <v>)")
    promote.set_defaults(handler=command_promote)

    rollout = commands.add_parser("rollout", help="promote, abort or retry a ModelDeployment's rollout, "
                                                  "or show its status")
    rollout.add_argument("verb", choices=("promote", "abort", "retry", "status"))
    rollout.add_argument("name", help="the ModelDeployment")
    rollout.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace")
    rollout.set_defaults(handler=command_rollout)

    feedback = commands.add_parser("feedback", help="the feedback service: reviewers' corrections come in here")
    feedback_commands = feedback.add_subparsers(dest="feedback_command", required=True)
    # `tuneloop feedback serve ARGS` is handed to the service's own parser whole (see main).
    feedback_commands.add_parser("serve", help="serve POST /v1/feedback (`tuneloop feedback serve --help`)")

    images = commands.add_parser("images", help="list the container images the operator runs and launches")
    images.add_argument("--config", type=Path,
                        help="operator configuration file (default: $TUNELOOP_CONFIG, else the defaults)")
    images.add_argument("--registry", metavar="REG",
                        help="rewrite each reference to this private registry (HOST[:PORT][/PATH]), "
                             "keeping repository path, tag and digest")
    images.set_defaults(handler=command_images)

    crds = commands.add_parser("crds", help="print the CustomResourceDefinitions (generated from the API models)")
    crds.set_defaults(handler=command_crds)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["feedback", "serve"]:
        from tuneloop.feedback.server import main as feedback_main

        return feedback_main(argv[2:])
    args = build_parser().parse_args(argv)
    if args.command != "operator":  # the operator's logging is kopf's (text or JSON)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
