"""`tuneloop validate` and the early checks of `tuneloop run`: what a user sees for good and bad manifests."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tuneloop.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "finetunejob.yaml"

VALID = """\
apiVersion: tuneloop.dev/v1alpha1
kind: FineTuneJob
metadata:
  name: {name}
spec:
  baseModel:
    name: smollm2-135m-instruct
  dataset:
    uri: {uri}
  method:
    lora:
      r: {r}
"""


def manifest(tmp_path: Path, name: str = "acme-tickets", uri: str = "data/tickets.jsonl", r: int = 16,
             file: str = "job.yaml") -> Path:
    path = tmp_path / file
    path.write_text(VALID.format(name=name, uri=uri, r=r), encoding="utf-8")
    return path


def test_the_bundled_example_is_valid(capsys):
    code = main(["validate", str(EXAMPLE)])

    out, err = capsys.readouterr()
    assert code == 0
    assert out == f"{EXAMPLE}: FineTuneJob/acme-tickets: valid\n"
    assert err == ""


def test_the_bundled_example_can_run_locally(capsys):
    code = main(["validate", "--local", str(EXAMPLE)])

    out, err = capsys.readouterr()
    assert code == 0
    assert out == f"{EXAMPLE}: FineTuneJob/acme-tickets: valid\n"
    assert err == ""


def test_the_bundled_example_names_a_dataset_that_exists():
    import yaml

    uri = yaml.safe_load(EXAMPLE.read_text())["spec"]["dataset"]["uri"]

    assert (EXAMPLE.parent / uri).is_file()


def test_an_invalid_manifest_names_the_file_the_job_and_the_field(tmp_path, capsys):
    path = manifest(tmp_path, name="bad-job", r=0)

    code = main(["validate", str(path)])

    out, err = capsys.readouterr()
    assert code == 1
    assert err == f"{path}: FineTuneJob/bad-job: spec.method.lora.r: must be >= 1\n"
    assert out == ""


def test_broken_yaml_is_reported_with_file_line_and_column(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: tuneloop.dev/v1alpha1\nkind: FineTuneJob\nmetadata:\n  name: bad: value\n")

    code = main(["validate", str(path)])

    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"{path}:4:12: not valid YAML: ")
    assert "mapping values are not allowed here" in err


def test_a_wrong_kind_is_reported(tmp_path, capsys):
    path = tmp_path / "cm.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n")

    code = main(["validate", str(path)])

    assert code == 1
    assert capsys.readouterr().err == (
        f"{path}: ConfigMap/settings: kind: 'ConfigMap' is not a Tuneloop kind (known: FineTuneJob, ModelDeployment, FineTuneSchedule)\n")


def test_local_checks_are_only_made_with_local(tmp_path, capsys):
    path = manifest(tmp_path, uri="pvc://datasets/tickets.jsonl")

    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    code = main(["validate", "--local", str(path)])

    assert code == 1
    assert capsys.readouterr().err == (f"{path}: FineTuneJob/acme-tickets: spec.dataset.uri: pvc:// storage needs "
                                       "a cluster; in local mode use a file path\n")


def test_every_file_and_document_is_checked(tmp_path, capsys):
    good = manifest(tmp_path, file="good.yaml")
    multi = tmp_path / "multi.yaml"
    multi.write_text(VALID.format(name="one", uri="a.jsonl", r=8) + "---\n"
                     + VALID.format(name="two", uri="b.jsonl", r=0))
    missing = tmp_path / "missing.yaml"

    code = main(["validate", str(missing), str(good), str(multi)])

    out, err = capsys.readouterr()
    assert code == 1
    assert out.splitlines() == [f"{good}: FineTuneJob/acme-tickets: valid", f"{multi}: FineTuneJob/one: valid"]
    assert err.splitlines()[0].startswith(f"{missing}: cannot read")
    assert err.splitlines()[1] == f"{multi}: FineTuneJob/two: spec.method.lora.r: must be >= 1"


@pytest.mark.parametrize(("content", "problem"), [
    pytest.param("", "no manifests in the file", id="empty"),
    pytest.param("- a\n- b\n", "document 1 is not a mapping", id="a-list"),
])
def test_files_without_a_manifest_are_reported(tmp_path, capsys, content, problem):
    path = tmp_path / "job.yaml"
    path.write_text(content)

    assert main(["validate", str(path)]) == 1
    assert capsys.readouterr().err == f"{path}: {problem}\n"


def test_run_local_with_an_invalid_manifest_launches_nothing(tmp_path, capsys):
    path = manifest(tmp_path, name="bad-job", r=0)
    workdir = tmp_path / "work"

    code = main(["run", str(path), "--local", "--workdir", str(workdir)])

    err = capsys.readouterr().err
    assert code == 2
    assert "spec.method.lora.r: must be >= 1" in err
    assert err.startswith(f"{path}: FineTuneJob/bad-job: ")
    assert not workdir.exists()


def test_run_local_rejects_cluster_storage_before_starting(tmp_path, capsys):
    path = manifest(tmp_path, uri="pvc://datasets/tickets.jsonl")
    workdir = tmp_path / "work"

    code = main(["run", str(path), "--local", "--workdir", str(workdir)])

    assert code == 2
    assert "spec.dataset.uri: pvc:// storage needs a cluster" in capsys.readouterr().err
    assert not workdir.exists()


def test_run_without_local_points_to_kubectl(tmp_path, capsys):
    path = manifest(tmp_path)

    assert main(["run", str(path), "--workdir", str(tmp_path / "work")]) == 2
    assert "kubectl apply" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_the_example_dataset_is_reproduced_byte_for_byte(tmp_path):
    out = tmp_path / "tickets.jsonl"

    completed = subprocess.run([sys.executable, str(ROOT / "examples" / "generate_tickets.py"), "--out", str(out)],
                               capture_output=True, text=True, timeout=60, check=False)

    assert completed.returncode == 0, completed.stderr
    assert out.read_bytes() == (ROOT / "examples" / "data" / "tickets.jsonl").read_bytes()


def test_metadata_that_is_not_a_mapping_is_reported_not_a_crash(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("apiVersion: tuneloop.dev/v1alpha1\nkind: FineTuneJob\nmetadata: acme-tickets\nspec: {}\n")

    code = main(["validate", str(path)])

    assert code == 1
    assert "metadata: must be a mapping, not 'acme-tickets'" in capsys.readouterr().err


def test_the_example_manifests_validate(capsys):
    from tuneloop.cli import main

    examples = sorted(str(path) for path in (Path(__file__).resolve().parents[1] / "examples").rglob("*.yaml"))
    assert main(["validate", *examples]) == 0
    assert capsys.readouterr().out.count(": valid") == len(examples)


def test_a_folder_is_read_as_kubectl_apply_reads_it(tmp_path, capsys):
    folder = tmp_path / "manifests"
    (folder / "team-b").mkdir(parents=True)
    manifest(folder, name="a-job", file="a.yaml")
    manifest(folder, name="b-job", file="b.yml")
    (folder / "notes.txt").write_text("not a manifest")
    manifest(folder / "team-b", name="nested", r=0)

    assert main(["validate", str(folder)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{folder / 'a.yaml'}: FineTuneJob/a-job: valid",
                                                    f"{folder / 'b.yml'}: FineTuneJob/b-job: valid"]
    assert main(["validate", "--recursive", str(folder)]) == 1
    assert capsys.readouterr().err == f"{folder / 'team-b' / 'job.yaml'}: FineTuneJob/nested: spec.method.lora.r: must be >= 1\n"


@pytest.mark.parametrize("folder", ["examples", "examples/cluster"])
def test_the_example_folders_validate_as_folders(folder, capsys):
    assert main(["validate", str(ROOT / folder)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.count(": valid") == len(list((ROOT / folder).glob("*.yaml")))


def test_a_folder_skips_other_kinds_with_a_note_but_a_named_file_does_not(tmp_path, capsys):
    manifest(tmp_path, name="a-job", file="a.yaml")
    (tmp_path / "secret.yaml").write_text("apiVersion: v1\nkind: Secret\nmetadata:\n  name: judge-key\n---\n"
                                          "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ml-team\n")
    (tmp_path / "kustomization.yaml").write_text("apiVersion: kustomize.config.k8s.io/v1beta1\n"
                                                 "kind: Kustomization\nresources: [a.yaml]\n")

    assert main(["validate", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{tmp_path / 'a.yaml'}: FineTuneJob/a-job: valid",
        f"{tmp_path / 'kustomization.yaml'}: Kustomization/<no name>: skipped (not a Tuneloop kind)",
        f"{tmp_path / 'secret.yaml'}: Secret/judge-key: skipped (not a Tuneloop kind)",
        f"{tmp_path / 'secret.yaml'}: Namespace/ml-team: skipped (not a Tuneloop kind)"]

    assert main(["validate", str(tmp_path / "secret.yaml")]) == 1
    assert "Secret/judge-key: kind: 'Secret' is not a Tuneloop kind" in capsys.readouterr().err


def test_a_misspelt_tuneloop_kind_in_a_folder_is_still_an_error(tmp_path, capsys):
    (tmp_path / "job.yaml").write_text(VALID.format(name="a-job", uri="data.jsonl", r=8).replace(
        "kind: FineTuneJob", "kind: FinetuneJob"))
    assert main(["validate", str(tmp_path)]) == 1
    assert "FinetuneJob/a-job: kind: 'FinetuneJob' is not a Tuneloop kind" in capsys.readouterr().err


def test_an_empty_folder_is_reported(tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith(f"{tmp_path}: no .yaml, .yml, .json files in the folder")


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(VALID.format(name="twice", uri="a.jsonl", r=8) + "  training:\n    epochs: 1\n"
                    + "  training:\n    epochs: 5\n")

    assert main(["validate", str(path)]) == 1
    assert capsys.readouterr().err == (f"{path}:15:3: not valid YAML: duplicate key 'training' "
                                       "(first given on line 13)\n")


def test_yaml_merge_keys_are_not_duplicates(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(VALID.format(name="merged", uri="a.jsonl", r=8)
                    + "  training: &base\n    epochs: 1\n  resources:\n    <<: *base\n    gpus: 1\n")
    main(["validate", str(path)])
    assert "duplicate" not in capsys.readouterr().err


def test_a_key_given_twice_on_one_line_is_refused(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(VALID.format(name="flow", uri="a.jsonl", r=8) + "  training: {epochs: 1, epochs: 5}\n")

    assert main(["validate", str(path)]) == 1
    assert "duplicate key 'epochs' (first given on line 13)" in capsys.readouterr().err


# --- validate --data: the dataset read as the trainer reads it, before any GPU ----------------------

DATA_JOB = """\
apiVersion: tuneloop.dev/v1alpha1
kind: FineTuneJob
metadata: {{name: acme-tickets}}
spec:
  baseModel: {{uri: {model}}}
  dataset: {{uri: tickets.jsonl, format: alpaca}}
  training: {{epochs: 3, microBatchSize: 4, gradientAccumulationSteps: 2, maxSeqLength: 256}}
"""


def data_job(tmp_path: Path, model: Path, rows: str) -> Path:
    (tmp_path / "tickets.jsonl").write_text(rows, encoding="utf-8")
    path = tmp_path / "job.yaml"
    path.write_text(DATA_JOB.format(model=model), encoding="utf-8")
    return path


def test_validate_data_reports_counts_token_lengths_truncation_and_steps(tmp_path, tiny_model_dir, capsys):
    from tiny_model import write_tickets

    write_tickets(tmp_path / "rows.jsonl", 100, seed=3)
    words = random.Random(5).choices([f"w{n}" for n in range(1000)], k=20000)
    long_rows = "".join(json.dumps({"instruction": f"Summarise case {n}.", "output": " ".join(words[n::10])}) + "\n"
                        for n in range(10))  # long answers: truncated, yet some answer is left to learn
    path = data_job(tmp_path, tiny_model_dir, (tmp_path / "rows.jsonl").read_text() + long_rows)

    assert main(["validate", "--data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rows: 110 (alpaca)" in out and "split: 88 train + 0 replay, 11 validation, 11 test" in out
    truncated = int(re.search(r"truncated: (\d+) of 88 training rows are longer than maxSeqLength 256", out)[1])
    assert 1 <= truncated <= 10 and re.search(rf"> 256 \(truncated\) +{truncated} ", out), out
    # 88 rows, micro-batches of 4 -> 22, accumulated by 2 -> 11 steps an epoch, 3 epochs
    assert "steps: about 33 optimizer steps (3 epoch(s))" in out


def test_validate_data_names_every_bad_row_with_its_line_and_never_a_traceback(tmp_path, tiny_model_dir, capsys):
    good = json.dumps({"instruction": "Route this.", "output": "BIL"})
    rows = [good] * 10 + ["[" * 100_000 + "]" * 100_000, '{"text": ' + "9" * 5000 + "}",
                          '{"instruction": "a\\ud800", "output": "x"}'] + ['{"instruction": "x"}'] * 60
    path = data_job(tmp_path, tiny_model_dir, "\n".join(rows) + "\n")

    assert main(["validate", "--data", str(path)]) == 1
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert "Traceback" not in captured.err + captured.out
    assert errors[0].endswith("data: 63 bad rows of 73 (the first 50 below)")
    assert "tickets.jsonl:11: broken JSON: nested deeper than a dataset row can be" in errors[1]
    assert "tickets.jsonl:12: broken JSON: Exceeds the limit (4300 digits)" in errors[2]
    assert "tickets.jsonl:13: field 'instruction' holds a lone UTF-16 surrogate" in errors[3]
    assert errors[-1].endswith("data: ... and 13 more") and len(errors) == 52


def test_validate_data_reads_a_schedules_base_dataset(capsys):
    """A FineTuneSchedule's template dataset is replayed by every run: it is checked the same way."""
    assert main(["validate", "--data", str(ROOT / "examples" / "finetuneschedule.yaml")]) == 0
    out = capsys.readouterr().out
    assert "FineTuneSchedule/acme-tickets-nightly: valid" in out and "rows: 300 (alpaca)" in out
    assert re.search(r"steps: about \d+ optimizer steps", out)


PREFERENCE_JOB = DATA_JOB.replace("format: alpaca}}", "format: alpaca, preferences: {{uri: prefs.jsonl}}}}") + \
    "  method: {{type: lora, objective: dpo}}\n"


def preference_job(tmp_path: Path, model: Path, rows: str, preferences: list[str]) -> Path:
    data_job(tmp_path, model, rows)
    (tmp_path / "prefs.jsonl").write_text("".join(row + "\n" for row in preferences), encoding="utf-8")
    path = tmp_path / "job.yaml"
    path.write_text(PREFERENCE_JOB.format(model=model), encoding="utf-8")
    return path


PAIR = json.dumps({"prompt": "Where is my parcel?", "chosen": "Routed to SHIP.", "rejected": "Routed to BIL."})


def test_validate_data_names_every_bad_preference_row_with_its_line(tmp_path, tiny_model_dir, capsys):
    from tiny_model import write_tickets

    write_tickets(tmp_path / "rows.jsonl", 30, seed=3)
    bad = [PAIR, json.dumps({"prompt": "Refund?", "chosen": "Routed to BIL.", "rejected": ""}),
           json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                       "chosen": "a", "rejected": "b"})]
    path = preference_job(tmp_path, tiny_model_dir, (tmp_path / "rows.jsonl").read_text(), bad)

    assert main(["validate", "--data", str(path)]) == 1
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert "Traceback" not in captured.err + captured.out
    assert errors[0].endswith("data: 2 bad rows of 3")
    assert errors[1].endswith(f"data: {tmp_path / 'prefs.jsonl'}:2: field 'rejected' is empty")
    assert errors[2].endswith(f"data: {tmp_path / 'prefs.jsonl'}:3: messages must end with the user's turn "
                              "(the answer being judged follows it)")


def test_validate_data_lists_bad_preference_rows_beside_bad_dataset_rows(tmp_path, tiny_model_dir, capsys):
    path = preference_job(tmp_path, tiny_model_dir, '{"instruction": "only a question"}\n' * 3,
                          [PAIR, json.dumps({"prompt": "Is it good?", "completion": "Yes.", "label": "yes"})])

    assert main(["validate", "--data", str(path)]) == 1
    errors = capsys.readouterr().err
    assert "tickets.jsonl:1: missing required field 'output'" in errors
    assert "prefs.jsonl:2: a kto row (completion, label) in a pairs file" in errors


def test_validate_data_reports_the_preference_rows(tmp_path, tiny_model_dir, capsys):
    from tiny_model import write_tickets

    write_tickets(tmp_path / "rows.jsonl", 30, seed=3)
    pairs = [json.dumps({"prompt": f"Is parcel {n} lost?", "chosen": "Routed to SHIP.", "rejected": "Routed to BIL."})
             for n in range(10)]
    path = preference_job(tmp_path, tiny_model_dir, (tmp_path / "rows.jsonl").read_text(), pairs)

    assert main(["validate", "--data", str(path)]) == 0
    out = capsys.readouterr().out
    assert "preference rows: 10 (pairs); after cleaning 10" in out
    assert "preference split: 9 train, 1 validation" in out
    # dpo trains no SFT stage: 9 pairs in micro-batches of 4 -> 3, by 2 -> 2 steps an epoch, 2 epochs
    assert "steps: about 4 optimizer steps (4 preference (2 epoch(s)))" in out
