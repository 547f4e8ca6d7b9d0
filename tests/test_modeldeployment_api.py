"""ModelDeployment API: parsing, defaults, the adapter rule, and a kubectl-explainable CRD."""

from __future__ import annotations

import pytest

from crd_schema import admit
from tuneloop.api.common import SpecError
from tuneloop.api.crd import definition
from tuneloop.api.modeldeployment import CRD, parse_manifest, parse_spec

BASE = {"baseModel": {"name": "llama-3.1-8b"}}


def manifest(**spec):
    return {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "support-bot", "namespace": "ml"}, "spec": {**BASE, **spec}}


def crd_schema():
    return definition(CRD)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_defaults_follow_argo_rollouts():
    spec = parse_spec({**BASE, "adapter": {"name": "support-bot", "alias": "champion"}})
    blue_green = spec.strategy.blue_green
    assert blue_green.auto_promotion_enabled is True
    assert (blue_green.scale_down_delay_seconds, blue_green.abort_scale_down_delay_seconds) == (30, 30)
    assert blue_green.active_service_name("support-bot") == "support-bot"
    assert blue_green.preview_service_name("support-bot") == "support-bot-preview"
    assert spec.port == 8000 and spec.serving.max_lora_rank == 16 and spec.serving.merged is False


def test_a_full_manifest_round_trips_through_the_wire_form():
    md = parse_manifest(manifest(
        adapter={"name": "support-bot", "version": "7"},
        serving={"replicas": 2, "gpus": 1, "maxLoraRank": 64, "extraArgs": ["--enforce-eager"]},
        strategy={"blueGreen": {"activeService": "bot", "autoPromotionEnabled": False, "previewReplicaCount": 1,
                                "prePromotionAnalysis": {
                                    "smokePrompts": [{"prompt": "Reset my password", "expect": {"contains": "link"}},
                                                     {"prompt": "As JSON", "expect": {"json": True}}],
                                    "requests": 50, "maxP95LatencyMs": 800, "maxErrorRate": 0.01,
                                    "minJudgeScore": 7,
                                    "judge": {"url": "http://judge.llm.svc:8000/v1", "model": "judge"}}}}))
    wire = md.spec.to_wire()
    assert wire["strategy"]["blueGreen"]["prePromotionAnalysis"]["smokePrompts"][1]["expect"] == {"json": True}
    assert parse_spec(wire) == md.spec


@pytest.mark.parametrize("adapter", [
    {"name": "bot", "version": "3", "alias": "champion"},
    {"name": "bot"},
    {"uri": "pvc://adapters/bot", "name": "bot"},
    {"version": "3"},
    {},
])
def test_exactly_one_adapter_form_in_pydantic_and_in_the_api_server(adapter):
    with pytest.raises(SpecError) as error:
        parse_spec({**BASE, "adapter": adapter})
    assert any(problem.startswith("spec.adapter: give uri, or name with exactly one of")
               for problem in error.value.problems), error.value.problems
    _, errors = admit(definition(CRD), manifest(adapter=adapter))
    assert errors and "spec.adapter" in errors[0]


@pytest.mark.parametrize("adapter", [{"name": "bot", "version": "3"}, {"name": "bot", "alias": "champion"},
                                     {"uri": "s3://adapters/bot/"}])
def test_each_adapter_form_is_accepted_and_server_defaults_match_pydantic(adapter):
    raw = manifest(adapter=adapter)
    stored, errors = admit(definition(CRD), raw)
    assert errors == []
    assert stored["spec"] == parse_manifest(raw).spec.to_wire()


@pytest.mark.parametrize("change, path", [
    ({"serving": {"maxLoraRank": 24}}, "spec.serving.maxLoraRank"),
    ({"serving": {"replicas": 0}}, "spec.serving.replicas"),
    ({"adapter": {"uri": "http://x/y"}}, "spec.adapter.uri"),
    ({"strategy": {"blueGreen": {"prePromotionAnalysis": {"smokePrompts": [
        {"prompt": "hi", "expect": {"contains": "a", "regex": "b"}}]}}}},
     "spec.strategy.blueGreen.prePromotionAnalysis.smokePrompts[0].expect"),
    ({"strategy": {"blueGreen": {"prePromotionAnalysis": {"smokePrompts": [
        {"prompt": "hi", "expect": {"regex": "("}}]}}}},
     "spec.strategy.blueGreen.prePromotionAnalysis.smokePrompts[0].expect.regex"),
])
def test_bad_fields_are_named_by_path(change, path):
    with pytest.raises(SpecError) as error:
        parse_spec({**BASE, "adapter": {"name": "bot", "version": "1"}, **change})
    assert any(problem.startswith(f"{path}:") for problem in error.value.problems), error.value.problems


def test_crd_names_printers_and_a_description_on_every_spec_field():
    crd = definition(CRD)
    names = crd["spec"]["names"]
    assert (names["plural"], names["shortNames"]) == ("modeldeployments", ["mdep"])
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Active", "Preview", "Score", "Age"]

    def walk(schema, path):
        assert "$ref" not in schema and "anyOf" not in schema, path
        for name, sub in schema.get("properties", {}).items():
            assert sub.get("description"), f"{path}.{name} has no description"
            walk(sub, f"{path}.{name}")
        if "items" in schema:
            walk(schema["items"], f"{path}[]")

    walk(crd_schema()["properties"]["spec"], "spec")
    rank = crd_schema()["properties"]["spec"]["properties"]["serving"]["properties"]["maxLoraRank"]
    assert rank["enum"] == [8, 16, 32, 64, 128, 256, 320, 512]


def test_an_adapter_vllm_cannot_load_is_named_before_any_deployment_tries():
    from tuneloop.api.modeldeployment import ModelDeploymentSpec, unservable_adapter

    spec = ModelDeploymentSpec.model_validate({
        "baseModel": {"name": "smollm2-135m-instruct"}, "adapter": {"name": "acme-tickets", "alias": "champion"},
        "serving": {"maxLoraRank": 16}})
    assert unservable_adapter(spec, "3", None) is None  # registered before the tag existed: nothing to check
    assert unservable_adapter(spec, "3", {"r": 16, "useDora": False}) is None
    dora = unservable_adapter(spec, "3", {"r": 8, "useDora": True})
    assert dora.startswith("adapter acme-tickets version 3 cannot be served: it was trained with DoRA")
    assert "spec.serving.merged" in dora
    rank = unservable_adapter(spec, "4", {"r": 64, "useDora": False})
    assert "LoRA rank 64 is above spec.serving.maxLoraRank 16" in rank
    everything = unservable_adapter(spec, "5", {"r": 64, "useDora": True, "bias": "all", "modulesToSave": ["lm_head"]})
    assert everything.count("; ") == 3 and "--enable-lora-bias" in everything and "lm_head" in everything
    biased = spec.model_copy(update={"serving": spec.serving.model_copy(update={"extra_args": ["--enable-lora-bias"]})})
    assert unservable_adapter(biased, "6", {"r": 8, "bias": "lora_only"}) is None
    merged = spec.model_copy(update={"serving": spec.serving.model_copy(update={"merged": True})})
    assert unservable_adapter(merged, "3", {"r": 64, "useDora": True}) is None
