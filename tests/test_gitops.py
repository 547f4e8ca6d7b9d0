"""GitOps promotion (issue 13): pin a ModelDeployment's adapter version in a Git working tree."""

from __future__ import annotations

import difflib
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tuneloop.api.modeldeployment import parse_manifest
from tuneloop.gitops import GitOpsError, adapter_name, commit_on_branch, pin_version, resolve_alias

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cluster" / "modeldeployment.yaml"
IDENTITY = ("-c", "user.name=test", "-c", "user.email=test@localhost")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *IDENTITY, "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "deploy"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    (repo / "apps").mkdir()
    shutil.copy(EXAMPLE, repo / "apps" / "modeldeployment.yaml")
    (repo / "README.md").write_text("deployments\n")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "initial")
    return repo


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    diff = list(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0))
    removed = [line[1:] for line in diff if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff if line.startswith("+") and not line.startswith("+++")]
    return removed, added


def test_pin_replaces_the_alias_line_and_keeps_everything_else(repo):
    path = repo / "apps" / "modeldeployment.yaml"
    before = path.read_text()

    change = pin_version(path, "7")

    after = path.read_text()
    assert change.changed and change.name == "acme-tickets"
    assert (change.old_alias, change.old_version, change.new) == ("champion", None, "7")
    assert change.old == "alias champion"
    removed, added = changed_lines(before, after)
    assert removed == ['    alias: champion               # follow the alias; or pin `version: "3"`']
    assert added == ['    version: "7"                  # follow the alias; or pin `version: "3"`']
    # Every comment line is still there; the long quoted prompt is neither folded nor re-quoted.
    assert [line for line in before.splitlines() if line.lstrip().startswith("#")] == \
           [line for line in after.splitlines() if line.lstrip().startswith("#")]
    assert "# MLflow registered model" in after
    manifest = parse_manifest(yaml.safe_load(after))
    assert (manifest.spec.adapter.version, manifest.spec.adapter.alias) == ("7", None)
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temporary file


def test_pinning_again_changes_nothing_and_repinning_only_the_version_line(repo):
    path = repo / "apps" / "modeldeployment.yaml"
    pin_version(path, "7")
    pinned = path.read_bytes()
    mtime = path.stat().st_mtime_ns

    again = pin_version(path, 7)  # an int is written as the string "7"

    assert not again.changed and again.old_version == "7" and again.old == "version 7"
    assert path.read_bytes() == pinned and path.stat().st_mtime_ns == mtime

    newer = pin_version(path, "12")
    assert newer.changed and newer.old_version == "7"
    removed, added = changed_lines(pinned.decode(), path.read_text())
    assert removed == ['    version: "7"                  # follow the alias; or pin `version: "3"`']
    assert added == ['    version: "12"                 # follow the alias; or pin `version: "3"`']


MULTI = """\
# Everything for acme, in one file.
apiVersion: tuneloop.dev/v1alpha1
kind: FineTuneJob
metadata:
  name: acme-train   # not a deployment
spec: {}
---
apiVersion: tuneloop.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: blue-team
spec:
  baseModel:
    name: smollm2-135m-instruct
  adapter:
    name: acme-tickets
    version: '3'     # pinned by hand
---   # the second deployment
apiVersion: tuneloop.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: red-team
spec:
  baseModel: {name: smollm2-135m-instruct}
  adapter:
    name: acme-tickets
    alias: champion
  serving:
    extraArgs:
    - --enforce-eager
    - --max-num-seqs=8
"""


def test_several_deployments_need_a_name_and_only_that_document_changes(tmp_path):
    path = tmp_path / "all.yaml"
    path.write_text(MULTI)

    with pytest.raises(GitOpsError) as error:
        pin_version(path, "9")
    assert str(path) in str(error.value) and "blue-team" in str(error.value) and "red-team" in str(error.value)
    with pytest.raises(GitOpsError, match="no ModelDeployment named 'green-team'.*blue-team, red-team"):
        pin_version(path, "9", name="green-team")
    assert path.read_text() == MULTI

    change = pin_version(path, "9", name="blue-team")
    assert change.changed and change.old_version == "3"
    removed, added = changed_lines(MULTI, path.read_text())
    assert removed == ["    version: '3'     # pinned by hand"]
    assert added == ["    version: '9'     # pinned by hand"]  # single quotes kept

    pin_version(path, "9", name="red-team")
    removed, added = changed_lines(MULTI, path.read_text())
    assert removed == ["    version: '3'     # pinned by hand", "    alias: champion"]
    assert added == ["    version: '9'     # pinned by hand", '    version: "9"']
    documents = list(yaml.safe_load_all(path.read_text()))
    assert [d["kind"] for d in documents] == ["FineTuneJob", "ModelDeployment", "ModelDeployment"]
    assert parse_manifest(documents[2]).spec.adapter.version == "9"


def test_other_indentation_and_crlf_are_kept(tmp_path):
    four = MULTI.split("---   # the second deployment\n")[1].replace("  ", "    ").replace("    - --", "        - --")
    path = tmp_path / "four.yaml"
    path.write_bytes(four.replace("\n", "\r\n").encode())
    assert adapter_name(path) == "acme-tickets"

    pin_version(path, "4")

    after = path.read_bytes().decode()
    assert after.count("\r\n") == after.count("\n")
    removed, added = changed_lines(four, after.replace("\r\n", "\n"))
    assert (removed, added) == (["        alias: champion"], ['        version: "4"'])


def test_errors_name_the_file(tmp_path, repo):
    path = repo / "apps" / "modeldeployment.yaml"
    before = path.read_bytes()
    for bad in ("", "seven", "v7"):
        with pytest.raises(GitOpsError, match=rf"{path}: ModelDeployment/acme-tickets: .*spec\.adapter\.version"):
            pin_version(path, bad)
    assert path.read_bytes() == before

    job_only = tmp_path / "job.yaml"
    job_only.write_text(MULTI.split("---")[0])
    with pytest.raises(GitOpsError, match=rf"{job_only}: no ModelDeployment in the file"):
        pin_version(job_only, "1")
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: ModelDeployment\nspec: [unclosed\n")
    with pytest.raises(GitOpsError, match=rf"{broken}: not valid YAML"):
        pin_version(broken, "1")
    uri = tmp_path / "uri.yaml"
    uri.write_text("apiVersion: tuneloop.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: u}\n"
                   "spec:\n  baseModel: {name: smollm2-135m-instruct}\n  adapter: {uri: 'pvc://claim/a'}\n")
    with pytest.raises(GitOpsError, match=rf"{uri}: .*uri.*no version to pin"):
        pin_version(uri, "1")
    with pytest.raises(GitOpsError, match="cannot read"):
        pin_version(tmp_path / "missing.yaml", "1")


def test_commit_on_branch_commits_only_the_manifest(repo, tmp_path, monkeypatch):
    # No identity anywhere: the commit falls back to tuneloop <tuneloop@localhost>.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    for variable in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(variable, raising=False)
    path = repo / "apps" / "modeldeployment.yaml"
    pin_version(path, "7")
    (repo / "README.md").write_text("deployments, edited by hand\n")  # unrelated, tracked
    (repo / "notes.txt").write_text("scratch\n")  # unrelated, untracked

    commit = commit_on_branch(repo, [path], "promote/acme-tickets-7", "Promote acme-tickets to version 7")

    assert git(repo, "rev-parse", "HEAD").strip() == commit
    assert git(repo, "branch", "--show-current").strip() == "promote/acme-tickets-7"
    assert git(repo, "branch", "--list", "main").strip()
    assert git(repo, "show", "--name-only", "--format=", commit).split() == ["apps/modeldeployment.yaml"]
    assert git(repo, "log", "-1", "--format=%an <%ae>|%s").strip() == \
           "tuneloop <tuneloop@localhost>|Promote acme-tickets to version 7"
    assert 'version: "7"' in git(repo, "show", f"{commit}:apps/modeldeployment.yaml")
    status = git(repo, "status", "--porcelain").splitlines()
    assert sorted(status) == [" M README.md", "?? notes.txt"]

    # Nothing left to commit for the manifest: a clear error, no empty commit.
    with pytest.raises(GitOpsError, match="nothing to commit"):
        commit_on_branch(repo, [path], "promote/acme-tickets-7", "again")
    # An existing branch is switched to, carrying the pinned file along; here with a repo-relative path.
    git(repo, "stash", "--include-untracked")
    git(repo, "switch", "main")
    git(repo, "branch", "promote/acme-tickets-8")
    pin_version(path, "8")
    second = commit_on_branch(repo, [Path("apps/modeldeployment.yaml")], "promote/acme-tickets-8", "version 8")
    assert git(repo, "branch", "--show-current").strip() == "promote/acme-tickets-8"
    assert git(repo, "rev-parse", "HEAD~1").strip() == git(repo, "rev-parse", "main").strip()
    assert git(repo, "rev-parse", "promote/acme-tickets-8").strip() == second
    # A branch whose copy of the file differs cannot take the change: git's reason, nothing committed.
    git(repo, "switch", "main")
    pin_version(path, "9")
    with pytest.raises(GitOpsError, match="git switch promote/acme-tickets-7 failed: .*would be overwritten"):
        commit_on_branch(repo, [path], "promote/acme-tickets-7", "version 9")
    assert git(repo, "rev-parse", "promote/acme-tickets-7").strip() == commit


def test_commit_on_branch_errors(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.yaml").write_text("a: 1\n")
    with pytest.raises(GitOpsError, match="not a git repository"):
        commit_on_branch(plain, [plain / "a.yaml"], "b", "m")


def test_resolve_alias_reads_the_mlflow_registry(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("acme", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    client.log_artifacts(run.info.run_id, str(adapter), artifact_path="adapter")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("acme-tickets")
    for _ in range(2):
        client.create_model_version("acme-tickets", f"runs:/{run.info.run_id}/adapter", run_id=run.info.run_id)
    client.set_registered_model_alias("acme-tickets", "champion", "2")

    assert resolve_alias(uri, "acme-tickets", "champion") == "2"
    with pytest.raises(GitOpsError, match="acme-tickets@nobody"):
        resolve_alias(uri, "acme-tickets", "nobody")
    assert mlflow  # imported for the skip


def test_the_promote_command_pins_and_commits(tmp_path):
    from tuneloop.cli import main

    repo = tmp_path / "gitops"
    repo.mkdir()
    manifest = repo / "modeldeployment.yaml"
    shutil.copy(EXAMPLE, manifest)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "add", "."], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
                   check=True)

    assert main(["promote", str(manifest), "--version", "7", "--commit"]) == 0

    assert 'version: "7"' in manifest.read_text() and "alias:" not in manifest.read_text()
    log = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%s%n%D"], capture_output=True, text=True)
    assert "Promote acme-tickets to adapter version 7" in log.stdout and "promote/acme-tickets-7" in log.stdout
