"""What the API server does with a custom resource and its CRD: apply defaults, validate the
OpenAPI v3 schema, evaluate the CEL rules. Used by the CRD tests and by the hardened emulator."""

from __future__ import annotations

import copy
import functools
from typing import Any

import celpy
from openapi_schema_validator import OAS30Validator


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting: absent fields with a default get it, recursively (as the API server does)."""
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value


@functools.lru_cache(maxsize=None)
def cel_program(rule: str):
    environment = celpy.Environment()
    return environment.program(environment.compile(rule))


def cel_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        if not bool(cel_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})):
            errors.append(f"{path}: Invalid value: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value and value[name] is not None:
                errors.extend(cel_errors(sub, value[name], f"{path}.{name}"))
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors.extend(cel_errors(schema["items"], item, f"{path}[{index}]"))
    return errors


def openapi_schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def admit(crd: dict[str, Any], obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The object as stored (defaults applied) and the errors the API server would answer with."""
    schema = openapi_schema(crd)
    stored = apply_defaults(schema, copy.deepcopy(obj))
    errors = [
        f"{'.'.join(str(part) for part in error.absolute_path) or '<root>'}: {error.message}"
        for error in OAS30Validator(schema).iter_errors(stored)
    ]
    if not errors:
        errors = cel_errors(schema, stored, "<root>")
    return stored, errors
