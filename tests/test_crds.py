"""The CRDs are generated from the API models; the committed ones must match, and the API server's
view of the schema (defaults, validation, CEL rules) must agree with the pydantic models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crd_schema import admit
from tuneloop.api.common import SpecError
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
    ({"dataset": {"uri": "data.jsonl", "holdOutFraction": 0.7}}, "spec.dataset.holdOutFraction"),
    ({"baseModel": {"name": "x", "uri": "pvc://m/x"}}, "give exactly one of name"),
    ({"baseModel": {}}, "give exactly one of name"),
    ({"method": {"lora": {"targetModules": ["all-linear", "q_proj"]}}}, "all-linear stands alone"),
    ({"dataset": {"uri": "d.jsonl", "cleaning": {"minTokens": 5, "maxTokens": 2}}}, "maxTokens must be >= minTokens"),
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
