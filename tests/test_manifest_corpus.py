"""Every bad manifest of tests/bad_manifests.py is refused by `tuneloop validate` with its field
path, and by the CRD (the emulator's OpenAPI + CEL evaluation, as the API server does) wherever a
schema can say it; the validator lists every problem at once; nothing ends in a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bad_manifests import CASES, EXAMPLES, Case
from crd_schema import admit, unknown_fields
from tuneloop.api import finetunejob, finetuneschedule, modeldeployment
from tuneloop.api.common import SpecError
from tuneloop.cli import main

REPO = Path(__file__).resolve().parents[1]
CRDS = {doc["spec"]["names"]["kind"]: doc for doc in yaml.safe_load_all((REPO / "crds" / "tuneloop.dev_crds.yaml").read_text())}
PARSE = {"FineTuneJob": finetunejob.parse_manifest, "ModelDeployment": modeldeployment.parse_manifest,
         "FineTuneSchedule": finetuneschedule.parse_manifest}


def test_the_corpus_is_large_and_every_case_is_distinct():
    assert len(CASES) >= 100
    assert len({case.id for case in CASES}) == len(CASES)
    assert all(case.where in ("schema", "json", "validator") for case in CASES)
    assert all(case.why for case in CASES if case.where == "validator")


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_the_examples_the_corpus_breaks_are_valid(kind):
    manifest = EXAMPLES[kind]
    PARSE[kind](manifest)
    assert admit(CRDS[kind], manifest)[1] == []


def validator_problems(case: Case) -> list[str]:
    with pytest.raises(SpecError) as refused:
        PARSE[case.kind](case.manifest())
    return refused.value.problems


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_the_validator_and_the_crd_refuse_each_bad_manifest(case):
    problems = validator_problems(case)
    assert any(case.mentions in problem for problem in problems), f"no problem names {case.mentions}: {problems}"
    manifest = case.manifest()
    if case.where == "json":
        with pytest.raises(ValueError):
            json.dumps(manifest, allow_nan=False)  # what kubectl does with it before any request
        return
    _, errors = admit(CRDS[case.kind], manifest)
    errors += unknown_fields(CRDS[case.kind], manifest)  # kubectl's default: --validate=strict
    if case.where == "schema":
        assert errors, f"the CRD admits {case.id}"
    else:
        assert errors == [], f"{case.id} is marked validator-only ({case.why}) but the CRD refuses it: {errors}"


def test_every_problem_of_a_manifest_is_reported_at_once():
    manifest = EXAMPLES["FineTuneJob"] | {"metadata": {"name": "Acme_Tickets!"}}
    manifest = json.loads(json.dumps(manifest))
    manifest["spec"]["training"]["epochs"] = True
    manifest["spec"]["resources"]["memory"] = "-5Gi"
    manifest["spec"]["dataset"]["uri"] = "pvc://claim/../../etc/shadow"
    manifest["spec"]["method"]["lora"]["alpha"] = float("inf")
    with pytest.raises(SpecError) as refused:
        finetunejob.parse_manifest(manifest)
    paths = sorted(problem.split(":")[0] for problem in refused.value.problems)
    assert paths == ["metadata.name", "spec.dataset.uri", "spec.method.lora.alpha", "spec.resources.memory",
                     "spec.training.epochs"], refused.value.problems


def test_tuneloop_validate_reads_the_whole_corpus_from_one_folder_and_names_each_file(tmp_path, capsys):
    """As `kubectl apply -f FOLDER` would: every file, every problem, one exit status."""
    for index, case in enumerate(CASES):
        if case.where != "json":  # YAML can carry .nan; json.dumps in the test above cannot
            (tmp_path / f"case-{index:03d}.yaml").write_text(yaml.safe_dump(case.manifest()))
    (tmp_path / "nan.yaml").write_text(yaml.safe_dump(EXAMPLES["FineTuneJob"]).replace(
        "learningRate: 0.001", "learningRate: .nan"))
    assert main(["validate", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    refused = {line.split(":")[0] for line in captured.err.splitlines() if line.startswith(str(tmp_path))}
    assert len(refused) == len(list(tmp_path.iterdir())), captured.err[-3000:]
    assert "spec.training.learningRate: must be a finite number" in captured.err
