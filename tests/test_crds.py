"""The CRDs are generated from the API models; the committed ones must match, and the API server's
view of the schema (defaults, validation, CEL rules) must agree with the pydantic models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crd_schema import admit
from tuneloop.api.common import SpecError
from tuneloop.api import modeldeployment as modeldeployment_api
from tuneloop.api.finetunejob import parse_manifest
from tuneloop.cli import all_crds, main

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "crds" / "tuneloop.dev_crds.yaml"


def finetunejob_crd() -> dict:
    return next(doc for doc in yaml.safe_load_all(COMMITTED.read_text()) if doc["spec"]["names"]["kind"] == "FineTuneJob")


def test_committed_crds_match_the_models(capsys):
    assert main(["crds"]) == 0
    generated = capsys.readouterr().out
    assert generated == COMMITTED.read_text(), "crds/ is stale: run `tuneloop crds > crds/tuneloop.dev_crds.yaml`"
    assert len(list(yaml.safe_load_all(generated))) == len(all_crds())


def test_crd_shape_for_kubectl():
    crd = finetunejob_crd()
    names = crd["spec"]["names"]
    assert names["shortNames"] == ["ftj"] and names["categories"] == ["tuneloop"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:2] == ["Phase", "Model"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def walk(schema, path):
        assert "$ref" not in schema and "anyOf" not in schema, path
        for name, sub in schema.get("properties", {}).items():
            assert sub.get("description"), f"{path}.{name} has no description"
            walk(sub, f"{path}.{name}")

    walk(spec, "spec")
    assert "description" in spec["properties"]["method"]["properties"]["lora"]["properties"]["r"]


def test_the_example_manifest_is_admitted_and_defaults_match_pydantic():
    manifest = yaml.safe_load((REPO / "examples" / "finetunejob.yaml").read_text())
    stored, errors = admit(finetunejob_crd(), manifest)
    assert errors == []
    # The API server's defaults and pydantic's are the same values.
    assert stored["spec"] == parse_manifest(manifest).spec.to_wire()


@pytest.mark.parametrize("change, message", [
    ({"method": {"lora": {"r": 0}}}, "spec.method.lora.r"),
    ({"method": {"type": "prefix"}}, "spec.method.type"),
    ({"dataset": {"uri": "data.jsonl", "testFraction": 0.7}}, "spec.dataset.testFraction"),
    ({"baseModel": {"name": "x", "uri": "pvc://m/x"}}, "give exactly one of name"),
    ({"baseModel": {}}, "give exactly one of name"),
    ({"method": {"lora": {"targetModules": ["all-linear", "q_proj"]}}}, "all-linear stands alone"),
    ({"dataset": {"uri": "d.jsonl", "cleaning": {"minTokens": 5, "maxTokens": 2}}}, "maxTokens must be >= minTokens"),
    ({"method": {"objective": "dpo"}}, "set dataset.preferences"),
    ({"method": {"objective": "sft-then-dpo"}, "dataset": {"uri": "d.jsonl", "preferences": {
        "uri": "k.jsonl", "format": "kto"}}}, "fit objective kto only"),
    ({"method": {"objective": "kto", "type": "full"}, "dataset": {"uri": "d.jsonl", "preferences": {
        "uri": "k.jsonl"}}}, "train a LoRA adapter"),
    ({"method": {"objective": "kto"}, "training": {"microBatchSize": 1}, "dataset": {"uri": "d.jsonl", "preferences": {
        "uri": "k.jsonl"}}}, "microBatchSize >= 2"),
])
def test_the_api_server_rejects_what_pydantic_rejects(change, message):
    def merge(base, extra):
        for key, value in extra.items():
            base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) and value else value
        return base

    manifest = {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "x"},
                "spec": {"baseModel": {"name": "smollm2-135m-instruct"}, "dataset": {"uri": "d.jsonl"}}}
    manifest["spec"] = merge(manifest["spec"], change)
    _, errors = admit(finetunejob_crd(), manifest)
    assert any(message in error for error in errors), errors
    with pytest.raises(SpecError):
        parse_manifest(manifest)


def modeldeployment(name: str, **blue_green: str) -> dict:
    manifest = yaml.safe_load((REPO / "examples" / "cluster" / "modeldeployment.yaml").read_text())
    manifest["metadata"] = {"name": name, "namespace": "ml"}
    manifest["spec"].setdefault("strategy", {}).setdefault("blueGreen", {}).update(blue_green)
    return manifest


@pytest.mark.parametrize("name, blue_green, accepted", [
    ("acme-tickets", {}, True),
    ("a" * 63, {}, True),
    ("a" * 64, {}, False),
    ("acme.tickets", {}, False),   # a valid custom resource name, not a valid Service name
    ("1acme", {}, False),
    ("acme-", {}, False),
    ("acme-tickets", {"activeService": "tickets.prod"}, False),
    ("acme-tickets", {"previewService": "p" * 64}, False),
    ("acme-tickets", {"activeService": "tickets", "previewService": "tickets-next"}, True),
])
def test_a_modeldeployment_is_named_as_its_services_must_be_for_the_crd_and_the_validator_alike(
        name, blue_green, accepted):
    manifest = modeldeployment(name, **blue_green)
    crd = next(doc for doc in yaml.safe_load_all(COMMITTED.read_text())
               if doc["spec"]["names"]["kind"] == "ModelDeployment")
    _, errors = admit(crd, manifest)
    assert (errors == []) == accepted, errors
    if accepted:
        modeldeployment_api.parse_manifest(manifest)
    else:
        with pytest.raises(SpecError) as raised:
            modeldeployment_api.parse_manifest(manifest)
        assert "must be a DNS-1035 label" in str(raised.value)


@pytest.mark.parametrize("name, nodes, accepted", [
    ("acme.tickets", 1, True),        # one node: Jobs, ConfigMaps and pods take any custom resource name
    ("1acme", 1, True),
    ("acme-tickets", 4, True),
    ("acme.tickets", 4, False),       # several: a headless Service and pod hostnames carry the name
    ("1acme", 4, False),
])
def test_a_multi_node_finetunejob_is_named_as_its_rendezvous_service_must_be(name, nodes, accepted):
    manifest = {"apiVersion": "tuneloop.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
                "spec": {"baseModel": {"name": "smollm2-135m-instruct"}, "dataset": {"uri": "pvc://d/t.jsonl"},
                         "resources": {"gpus": 1, "nodes": nodes}}}
    _, errors = admit(finetunejob_crd(), manifest)
    assert (errors == []) == accepted, errors
    if accepted:
        parse_manifest(manifest)
    else:
        assert any("multi-node FineTuneJob" in error for error in errors)
        with pytest.raises(SpecError, match=r"^metadata.name: a multi-node FineTuneJob"):
            parse_manifest(manifest)


def committed_crds() -> dict[str, dict]:
    return {doc["spec"]["names"]["kind"]: doc for doc in yaml.safe_load_all(COMMITTED.read_text())}


def undescribed(schema: dict, path: str) -> list[str]:
    """Every property under `schema` (list items and map values included) that has no description."""
    missing = [f"{path}.{name}" for name, sub in schema.get("properties", {}).items() if not sub.get("description")]
    for name, sub in schema.get("properties", {}).items():
        missing += undescribed(sub, f"{path}.{name}")
    if "items" in schema:
        missing += undescribed(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        missing += undescribed(schema["additionalProperties"], f"{path}{{}}")
    return missing


@pytest.mark.parametrize("kind", ["FineTuneJob", "ModelDeployment", "FineTuneSchedule"])
def test_kubectl_explain_has_a_description_for_every_spec_and_status_field(kind):
    properties = committed_crds()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    missing = undescribed(properties["spec"], "spec") + undescribed(properties["status"], "status")
    assert missing == [], f"{kind}: {len(missing)} field(s) without a description: {', '.join(missing)}"


@pytest.mark.parametrize("kind", ["FineTuneJob", "ModelDeployment", "FineTuneSchedule"])
def test_conditions_are_a_list_map_keyed_by_a_required_type(kind):
    conditions = committed_crds()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    # Kubernetes (1.20 too) refuses a list-map whose key is neither required nor defaulted.
    assert "type" in conditions["items"]["required"]
    assert {"status", "reason", "lastTransitionTime"} <= set(conditions["items"]["required"])


SCHEMA_TYPES = {"string": {"string"}, "number": {"number", "integer"}, "integer": {"integer"},
                "boolean": {"boolean"}, "date": {"string"}}


@pytest.mark.parametrize("kind", ["FineTuneJob", "ModelDeployment", "FineTuneSchedule"])
def test_printer_columns_read_at_a_glance_and_name_fields_of_their_type(kind):
    version = committed_crds()[kind]["spec"]["versions"][0]
    columns = version["additionalPrinterColumns"]
    shown = [column["name"] for column in columns if not column.get("priority")]
    assert len(shown) <= 8, f"{kind}: {len(shown)} default columns ({shown}); move detail to priority 1 (-o wide)"
    assert shown[-1] == "Age" and all(column.get("priority") for column in columns[len(shown):])
    for column in columns:
        if column["jsonPath"] == ".metadata.creationTimestamp":
            continue
        schema = version["schema"]["openAPIV3Schema"]
        for part in column["jsonPath"].lstrip(".").split("."):
            name, _, index = part.partition("[")
            schema = schema["properties"][name]
            if index:
                schema = schema["items"]
        assert schema["type"] in SCHEMA_TYPES[column["type"]], (column, schema["type"])
        # A verdict reads Passed/Failed, not true/false (SUSPEND stays a boolean, as a CronJob's does).
        assert schema["type"] != "boolean" or column["jsonPath"].startswith(".spec."), column["name"]
