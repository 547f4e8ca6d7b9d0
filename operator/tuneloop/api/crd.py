"""CustomResourceDefinitions generated from the pydantic models, so the two cannot disagree.

pydantic's JSON Schema becomes a Kubernetes structural schema: references inlined, optional
values as `nullable`, JSON Schema 2020 exclusive bounds as OpenAPI 3.0 booleans, nested objects
defaulted to `{}` so the API server fills their defaults, and the models' CEL rules
(`x-kubernetes-validations`) kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from tuneloop.api.common import GROUP, VERSION

DROPPED_KEYS = {"title", "additionalProperties", "$defs"}


@dataclass(frozen=True)
class Printer:
    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    printers: tuple[Printer, ...]
    description: str
    # CEL rules on the whole object: the only place a rule can see metadata.name.
    rules: tuple[tuple[str, str], ...] = ()


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        target = defs[schema["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs)
    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if option.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"not structural: a union of {options}")
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        result = structural({**options[0], **rest}, defs)
        result["nullable"] = True
        if result.get("default", "") is None:
            del result["default"]
        return result

    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key in DROPPED_KEYS or key == "properties" or key == "items":
            continue
        if key == "const":
            result["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            result["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            result[key] = True
        else:
            result[key] = value
    if "items" in schema:
        result["items"] = structural(schema["items"], defs)
    if schema.get("type") == "object":
        extra = schema.get("additionalProperties")
        if "properties" in schema:
            properties = {name: structural(value, defs) for name, value in schema["properties"].items()}
            required = set(schema.get("required", ()))
            for name, value in properties.items():
                # An optional nested object defaults to {} so that the server fills in its fields' defaults.
                if (value.get("type") == "object" and "properties" in value and not value.get("nullable")
                        and name not in required):
                    value.setdefault("default", {})
            result["properties"] = properties
        elif isinstance(extra, dict) and extra:
            result["additionalProperties"] = structural(extra, defs)
        else:
            result["x-kubernetes-preserve-unknown-fields"] = True
    return result


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return structural(schema, schema.get("$defs", {}))


def definition(kind: Kind) -> dict[str, Any]:
    spec = openapi_schema(kind.spec)
    status = openapi_schema(kind.status)
    status["x-kubernetes-preserve-unknown-fields"] = True  # kopf keeps its own bookkeeping here
    status.pop("required", None)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "tuneloop"}},
        "spec": {
            "group": GROUP,
            "names": {"kind": kind.kind, "listKind": f"{kind.kind}List", "plural": kind.plural,
                      "singular": kind.kind.lower(), "shortNames": list(kind.short_names),
                      "categories": ["tuneloop"]},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": p.name, "type": p.type, "jsonPath": p.json_path,
                     **({"description": p.description} if p.description else {}),
                     **({"priority": p.priority} if p.priority else {})}
                    for p in kind.printers
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object", "description": kind.description, "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                        "metadata": {"type": "object"}, "spec": spec, "status": status,
                    },
                    **({"x-kubernetes-validations": [{"rule": rule, "message": message}
                                                     for rule, message in kind.rules]} if kind.rules else {}),
                }},
            }],
        },
    }


def render(kinds: list[Kind]) -> str:
    return "---\n".join(yaml.safe_dump(definition(kind), sort_keys=False, width=100) for kind in kinds)
