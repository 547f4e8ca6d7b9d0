"""`tuneloop validate`: check manifests, and with --data the datasets they name."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from tuneloop.api import finetuneschedule, modeldeployment
from tuneloop.api.common import SpecError
from tuneloop.api.finetunejob import KIND as FINETUNEJOB, FineTuneJob, parse_manifest
from tuneloop.manifest_files import ManifestError, load_documents, manifest_files
from tuneloop.reconcile.finetunejob import check_context

KNOWN_KINDS = (FINETUNEJOB, modeldeployment.KIND, finetuneschedule.KIND)
TUNELOOP_GROUP = "tuneloop.dev"


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
        from tuneloop.workload_data.rows import DataError
        from tuneloop_trainer.data_report import data_report
    except ImportError as error:
        return [], [f"--data needs the trainer package (pip install -e trainer-image): {error}"]
    job = parse_manifest(document)
    logging.getLogger("tuneloop_trainer").setLevel(logging.ERROR)  # the report says it all
    with tempfile.TemporaryDirectory(prefix="tuneloop-validate-") as work:
        runtime = LocalRuntime(workdir=Path(work), manifest_dir=path.resolve().parent)
        workload = None
        try:
            workload = runtime.trainer_workload(job, Path(work))
            report = data_report(workload, load_tokenizer(workload.model_path),
                                 world_size=job.spec.resources.training_processes)
        except (DataError, CatalogError, ValueError, OSError) as error:
            problems = data_problems(error)
            read_preferences = workload is not None and workload.preferences_path and any(
                workload.preferences_path in problem for problem in problems)
            if workload is not None and not read_preferences:
                problems += preference_problems(workload)  # the preparation stopped before reading them
            return [], problems
    return report.lines(), []


def data_problems(error: Exception) -> list[str]:
    """A data error as lines: every bad row (BadRows) by file and line, up to LISTED_BAD_ROWS of them."""
    from tuneloop.workload_data.rows import BadRows

    if not isinstance(error, BadRows):
        return [str(error)]
    listed = error.problems[:LISTED_BAD_ROWS]
    rest = len(error.problems) - len(listed)
    return [f"{len(error.problems):,} bad rows of {error.rows:,}" + (f" (the first {len(listed)} below)" if rest
                                                                    else ""), *listed] + \
        ([f"... and {rest:,} more"] if rest else [])


def preference_problems(workload: Any) -> list[str]:
    """The preference file's bad rows, read on their own: a bad dataset.uri must not hide them."""
    from tuneloop.workload_data.preferences import load_preferences
    from tuneloop.workload_data.rows import DataError

    spec = workload.dataset.preferences
    if workload.method.objective == "sft" or spec is None or not workload.preferences_path:
        return []
    try:
        load_preferences(Path(workload.preferences_path), spec.format, workload.dataset.system_prompt)
    except (DataError, OSError) as error:
        return data_problems(error)
    return []


def other_kind(document: dict[str, Any]) -> bool:
    """A Kubernetes object of another API group (Secret, Namespace, Kustomization...): a folder of
    manifests holds them beside Tuneloop's; a kind misspelt in Tuneloop's own group is not one."""
    api_version = document.get("apiVersion")
    return (isinstance(api_version, str) and isinstance(document.get("kind"), str)
            and document["kind"] not in KNOWN_KINDS and api_version.split("/")[0] != TUNELOOP_GROUP)


def command_validate(args: argparse.Namespace) -> int:
    failed = False
    paths: list[tuple[Path, bool]] = []  # (file, read from a folder)
    for given in args.files:
        try:
            paths += [(path, given.is_dir()) for path in manifest_files(given, args.recursive)]
        except ManifestError as error:
            print(error, file=sys.stderr)
            failed = True
    for path, in_folder in paths:
        try:
            documents = load_documents(path)
        except ManifestError as error:
            print(error, file=sys.stderr)
            failed = True
            continue
        for document in documents:
            if in_folder and other_kind(document):
                print(f"{path}: {describe(document)}: skipped (not a Tuneloop kind)")
                continue
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




def add_parser(commands: argparse._SubParsersAction) -> None:
    validate = commands.add_parser("validate", help="check manifests",
                                   description="Check Tuneloop manifests; say what is wrong and where. In a folder, "
                                               "objects of other kinds (Secrets, Namespaces...) are skipped with a "
                                               "note; a file named on its own must hold only Tuneloop kinds.")
    validate.add_argument("files", type=Path, nargs="+", metavar="FILE_OR_FOLDER",
                          help="manifest files, or folders of .yaml/.yml/.json files (as kubectl apply -f)")
    validate.add_argument("-R", "--recursive", action="store_true", help="also read the folders below a folder")
    validate.add_argument("--local", action="store_true", help="also check that the job can run locally")
    validate.add_argument("--data", action="store_true",
                          help="also read every row of each FineTuneJob's (and schedule template's) dataset as "
                               "its trainer would (CPU, the base model's tokenizer, no weights): bad rows, token "
                               "lengths, truncation, steps")
    validate.set_defaults(handler=command_validate)
