"""The objects serving a ModelDeployment: valid Kubernetes, vLLM's LoRA options, probes, hardening."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest

from tuneloop.api.common import SpecError
from tuneloop.api.modeldeployment import parse_manifest
from tuneloop.config import OperatorConfig
from tuneloop.reconcile.modeldeployment import target_for
from vllm_cli import vllm_checks
from tuneloop.runtime.serving_manifests import (
    active_service,
    deployment,
    disruption_budget,
    preview_service,
)

K8S_VERSION = "1.33.0"
CONFIG = OperatorConfig.model_validate({
    "catalog": {"llama-3.1-8b": "pvc://models/llama-3.1-8b", "qwen": "s3://models/qwen"},
    "mlflowTrackingUri": "http://mlflow.tuneloop:5000", "imagePullSecrets": ["registry-creds"],
})


def model_deployment(adapter=None, **spec):
    return parse_manifest({
        "apiVersion": "tuneloop.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "support-bot", "namespace": "ml", "uid": "7d1f0c52-2222-4b7e-9a55-0c3e5d9f1a20"},
        "spec": {"baseModel": {"name": "llama-3.1-8b"}, "adapter": adapter or {"name": "support-bot", "version": "7"},
                 "serving": {"replicas": 2, "gpus": 1, "memory": "48Gi", "maxLoraRank": 32, "maxModelLen": 4096},
                 **spec},
    })


def objects(md, colour="green"):
    target = target_for(md.spec, None)
    return [deployment(md, colour, target, 2, CONFIG), active_service(md, "blue"), preview_service(md, colour),
            disruption_budget(md, "blue")]


def server(obj):
    return obj["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("md", [
    model_deployment(),
    model_deployment(serving={"merged": True, "gpus": 2, "extraArgs": ["--enforce-eager"]}),
    model_deployment(adapter={"uri": "pvc://adapters/support-bot/run-3"}),
    model_deployment(adapter={"uri": "s3://adapters/support-bot/"}, baseModel={"name": "qwen"}),
])
def test_every_object_validates_against_the_kubernetes_schemas(md):
    for obj in objects(md):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_a_name_of_63_characters_makes_valid_children_and_distinct_names_stay_distinct():
    def named(name):
        md = model_deployment()
        return md.model_copy(update={"metadata": md.metadata.model_copy(update={"name": name})})

    longest = named("a" * 62 + "b")  # the active Service carries the name itself: 63 is its limit
    for obj in objects(longest):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        assert len(obj["metadata"]["name"]) <= 63  # the schemas check neither this nor label values
        assert all(len(value) <= 63 for value in obj["metadata"]["labels"].values())
    other = objects(named("a" * 62 + "c"))
    assert [o["metadata"]["name"] for o in objects(longest)] != [o["metadata"]["name"] for o in other]


def test_lora_serving_passes_the_adapter_as_a_lora_module():
    md = model_deployment()
    obj = deployment(md, "green", target_for(md.spec, None), 2, CONFIG)
    container = server(obj)
    assert container["image"] == OperatorConfig().images.vllm and container["command"] == ["vllm", "serve"]
    args = container["args"]
    assert args[0] == "/mnt/pvc/models/llama-3.1-8b"
    for flag, value in (("--lora-modules", "support-bot=/adapter"), ("--max-loras", "1"), ("--max-lora-rank", "32"),
                        ("--max-model-len", "4096"), ("--port", "8000"), ("--served-model-name", "support-bot-base")):
        assert args[args.index(flag) + 1] == value, flag
    assert "--enable-lora" in args
    assert args[args.index("--chat-template") + 1] == "/adapter/chat_template.jinja", "the template of training"
    fetch = obj["spec"]["template"]["spec"]["initContainers"][-1]
    assert fetch["command"][-2:] == ["models:/support-bot/7", "/adapter"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.tuneloop:5000"} in fetch["env"]
    assert container["resources"]["limits"] == {"memory": "48Gi", "nvidia.com/gpu": "1"}


def test_merged_serving_has_no_lora_flags_and_serves_under_the_resource_name():
    md = model_deployment(serving={"merged": True, "gpus": 2, "extraArgs": ["--enforce-eager"]})
    args = server(deployment(md, "blue", target_for(md.spec, None), 1, CONFIG))["args"]
    assert not {"--enable-lora", "--lora-modules", "--max-loras", "--max-lora-rank"} & set(args)
    assert args[:3] == ["/adapter", "--served-model-name", "support-bot"]
    assert args[args.index("--tensor-parallel-size") + 1] == "2" and args[-1] == "--enforce-eager"


def test_pvc_adapters_are_mounted_not_fetched():
    md = model_deployment(adapter={"uri": "pvc://adapters/support-bot/run-3"})
    pod = deployment(md, "blue", target_for(md.spec, None), 1, CONFIG)["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert "support-bot=/mnt/pvc/adapters/support-bot/run-3" in pod["containers"][0]["args"]
    assert "--chat-template" not in pod["containers"][0]["args"], "a folder of unknown origin may have none"


def test_readiness_checks_the_adapter_is_listed_and_liveness_is_health():
    container = server(objects(model_deployment())[0])
    readiness = container["readinessProbe"]["exec"]["command"]
    assert readiness[:2] == ["python3", "-c"] and "/v1/models" in readiness[2]
    assert readiness[3:] == ["8000", "support-bot"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert container["startupProbe"]["httpGet"]["path"] == "/health"


def test_the_readiness_check_runs(tmp_path):
    """The probe's program against a fake /v1/models: listed -> 0, not listed -> 1."""
    import http.server
    import json
    import subprocess
    import sys
    import threading

    class Models(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"data": [{"id": "support-bot-base"}, {"id": "support-bot"}]}).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        command = server(objects(model_deployment())[0])["readinessProbe"]["exec"]["command"]
        port = str(httpd.server_address[1])
        assert subprocess.run([sys.executable, "-c", command[2], port, "support-bot"]).returncode == 0
        assert subprocess.run([sys.executable, "-c", command[2], port, "other"]).returncode == 1
    finally:
        httpd.shutdown()


def test_pods_are_hardened_offline_and_labelled():
    md = model_deployment()
    obj = objects(md)[0]
    pod = obj["spec"]["template"]["spec"]
    for container in [*pod["containers"], *pod.get("initContainers", [])]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] and not context["allowPrivilegeEscalation"]
        assert context["readOnlyRootFilesystem"] and context["capabilities"] == {"drop": ["ALL"]}
    env = {item["name"]: item.get("value") for item in pod["containers"][0]["env"]}
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["DO_NOT_TRACK"] == "1"
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
    pod_labels = obj["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["app.kubernetes.io/managed-by"] == "tuneloop"
    assert pod_labels["tuneloop.dev/modeldeployment"] == "support-bot" and pod_labels["tuneloop.dev/colour"] == "green"
    assert pod_labels["tuneloop.dev/revision"] == target_for(md.spec, None).revision
    assert "tuneloop.dev/revision" not in obj["spec"]["selector"]["matchLabels"]
    assert obj["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    assert pod["automountServiceAccountToken"] is False


def test_services_and_budget_select_a_colour():
    deployment_obj, active, preview, budget = objects(model_deployment(), colour="green")
    assert active["metadata"]["name"] == "support-bot" and active["spec"]["selector"]["tuneloop.dev/colour"] == "blue"
    assert preview["metadata"]["name"] == "support-bot-preview"
    assert preview["spec"]["selector"]["tuneloop.dev/colour"] == "green"
    assert budget["spec"]["selector"]["matchLabels"] == active["spec"]["selector"]
    assert budget["spec"]["maxUnavailable"] == 1
    for obj in (active, preview, budget):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "7d1f0c52-2222-4b7e-9a55-0c3e5d9f1a20"


SERVINGS = [{"maxLoraRank": 64, "maxLoras": 2, "maxModelLen": 2048},
            {"merged": True, "gpus": 2, "extraArgs": ["--enforce-eager"]},
            {"maxLoraRank": 320, "extraArgs": ["--gpu-memory-utilization", "0.85"]}]


def as_fetched(args: list[str], folder: Path) -> list[str]:
    """The arguments as the pod runs them once the init container has fetched the adapter to
    /adapter (vLLM checks that a chat template path exists): /adapter is `folder` here."""
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    return [arg.replace("/adapter", str(folder)) for arg in args]


def test_vllm_accepts_the_command_lines_the_operator_renders(tmp_path):
    """vLLM 0.10.1.1's own parser and LoRA configuration (tests/vllm_cli.py), not a copy of its options."""
    mds = [model_deployment(serving=serving) for serving in SERVINGS]
    containers = [server(deployment(md, "blue", target_for(md.spec, None), 1, CONFIG)) for md in mds]
    assert all(container["command"] == ["vllm", "serve"] for container in containers)
    answers = vllm_checks(commands=[as_fetched(container["args"], tmp_path) for container in containers])["commands"]
    assert [answer["error"] for answer in answers] == [None, None, None]
    lora, merged, high_rank = (answer["args"] for answer in answers)
    assert lora["enable_lora"] and lora["max_lora_rank"] == 64 and lora["max_loras"] == 2
    assert lora["max_model_len"] == 2048 and lora["port"] == 8000 and lora["host"] == "0.0.0.0"
    assert lora["chat_template"] == f"{tmp_path}/chat_template.jinja"
    assert "support-bot" not in lora["served_model_name"], "the adapter, not the base model, answers to the name"
    assert not merged["enable_lora"] and merged["served_model_name"] == ["support-bot"]
    assert merged["tensor_parallel_size"] == 2 and merged["enforce_eager"]
    assert high_rank["max_lora_rank"] == 320 and high_rank["gpu_memory_utilization"] == 0.85


def spec_problems(spec: dict) -> list[str]:
    try:
        model_deployment(**spec)
    except SpecError as error:
        return error.problems
    return []


def test_vllm_refuses_what_the_crd_refuses_so_the_operator_never_renders_it(tmp_path):
    """The CRD's choices for maxLoraRank are vLLM's: the ranks it refuses are the ones the schema refuses."""
    md = model_deployment()
    base = as_fetched(server(deployment(md, "blue", target_for(md.spec, None), 1, CONFIG))["args"], tmp_path)
    rank = base.index("--max-lora-rank") + 1
    ranks = [8, 16, 17, 32, 64, 100, 128, 256, 320, 512, 1024]
    answers = vllm_checks(commands=[[*base[:rank], str(r), *base[rank + 1:]] for r in ranks]
                          + [[*base, "--no-such-option"]])["commands"]
    accepted_by_vllm = {r for r, answer in zip(ranks, answers) if answer["error"] is None}
    accepted_by_crd = {r for r in ranks if not spec_problems({"serving": {"maxLoraRank": r}})}
    assert accepted_by_vllm == accepted_by_crd == {8, 16, 32, 64, 128, 256, 320, 512}
    assert "max_lora_rank (17) must be one of" in answers[2]["error"]
    assert "--no-such-option" in answers[-1]["error"]


ADAPTER_CONFIGS = {  # as peft writes adapter_config.json; only what vLLM's check reads differs
    "plain": {},
    "high-rank": {"r": 64},
    "dora": {"use_dora": True},
    "rslora": {"use_rslora": True},
    "bias-all": {"bias": "all"},
    "bias-lora-only": {"bias": "lora_only"},
    "modules-to-save": {"modules_to_save": ["lm_head"]},
    "everything-wrong": {"r": 128, "use_dora": True, "bias": "all", "modules_to_save": ["embed_tokens"]},
}


@pytest.mark.parametrize("bias_flag", [False, True], ids=["plain-args", "enable-lora-bias"])
def test_the_operator_refuses_exactly_the_adapters_vllm_refuses(tmp_path, bias_flag):
    """unservable_adapter (a Degraded reason, before any Deployment) against vLLM's own PEFTHelper, on the
    tag registration writes from each adapter_config.json."""
    import json

    from tuneloop.api.modeldeployment import lora_options, unservable_adapter

    serving = {"maxLoraRank": 32, **({"extraArgs": ["--enable-lora-bias"]} if bias_flag else {})}
    md = model_deployment(serving=serving)
    folders = {}
    for name, changes in ADAPTER_CONFIGS.items():
        config = {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"],
                  "bias": "none", "use_dora": False, "use_rslora": False, "modules_to_save": None, **changes}
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "adapter_config.json").write_text(json.dumps(config))
    verdicts = vllm_checks(adapters=[(folder, 32, bias_flag) for folder in folders.values()])["adapters"]
    for (name, folder), verdict in zip(folders.items(), verdicts):
        ours = unservable_adapter(md.spec, "7", lora_options(json.loads((folder / "adapter_config.json").read_text())))
        assert (ours is None) == (verdict is None), (name, ours, verdict)
    refused_by_vllm = {name for name, verdict in zip(folders, verdicts) if verdict}
    expected = {"high-rank", "dora", "modules-to-save", "everything-wrong"}
    assert refused_by_vllm == (expected if bias_flag else expected | {"bias-all", "bias-lora-only"})
