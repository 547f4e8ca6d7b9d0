"""What the API server does with a custom resource and its CRD: apply defaults, validate the
OpenAPI v3 schema, evaluate the CEL rules. Used by the CRD tests and by the hardened emulator."""

from __future__ import annotations

import copy
import functools
import re
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


DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def name_errors(obj: dict[str, Any]) -> list[str]:
    """What the API server checks of every custom resource's name (ValidateObjectMeta)."""
    name = (obj.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        return ["metadata.name: Required value: name or generateName is required"]
    if len(name) > 253 or not DNS1123_SUBDOMAIN.fullmatch(name):
        return [f"metadata.name: Invalid value: {name[:80]!r}: a lowercase RFC 1123 subdomain must consist of "
                "lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                "character (at most 253)"]
    return []


def unknown_fields(crd: dict[str, Any], obj: Any, schema: dict[str, Any] | None = None, path: str = "") -> list[str]:
    """Fields the schema does not declare: the API server prunes them silently, or refuses them with
    field validation Strict (kubectl's default since 1.27: `--validate=strict`)."""
    schema = openapi_schema(crd) if schema is None else schema
    if schema.get("x-kubernetes-preserve-unknown-fields") or path == ".metadata":
        return []
    found = []
    if isinstance(obj, dict) and "properties" in schema:
        for name, value in obj.items():
            if name not in schema["properties"]:
                found.append(f"{path[1:]}.{name}: unknown field".lstrip("."))
            else:
                found += unknown_fields(crd, value, schema["properties"][name], f"{path}.{name}")
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for name, value in obj.items():
            found += unknown_fields(crd, value, schema["additionalProperties"], f"{path}.{name}")
    elif isinstance(obj, list) and "items" in schema:
        for index, item in enumerate(obj):
            found += unknown_fields(crd, item, schema["items"], f"{path}[{index}]")
    return found


def admit(crd: dict[str, Any], obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The object as stored (defaults applied) and the errors the API server would answer with."""
    schema = openapi_schema(crd)
    stored = apply_defaults(schema, copy.deepcopy(obj))
    errors = name_errors(obj) + [
        f"{'.'.join(str(part) for part in error.absolute_path) or '<root>'}: {error.message}"
        for error in OAS30Validator(schema).iter_errors(stored)
    ]
    if not errors:
        errors = cel_errors(schema, stored, "<root>")
    return stored, errors


PRINTER_PATH = re.compile(r"^(\.[A-Za-z][A-Za-z0-9]*(\[[0-9]+\])?)+$")


def printed_columns(crd: dict[str, Any], obj: dict[str, Any], *, wide: bool = False) -> dict[str, Any]:
    """What `kubectl get` (with `-o wide`: the priority columns too) shows of `obj`: each printer column's
    value at its JSONPath, None where the path leads nowhere (kubectl prints an empty cell). Only the
    JSONPath the printers use (`.a.b`, `.a[0]`); any other raises, so this cannot quietly misread one."""
    values = {}
    for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]:
        if column.get("priority", 0) and not wide:
            continue
        path = column["jsonPath"]
        if not PRINTER_PATH.fullmatch(path):
            raise ValueError(f"column {column['name']}: JSONPath {path!r} is beyond what this helper reads")
        value: Any = obj
        for name, index in re.findall(r"\.([A-Za-z0-9]+)(?:\[([0-9]+)\])?", path):
            value = value.get(name) if isinstance(value, dict) else None
            if index and value is not None:
                value = value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
        values[column["name"]] = value
    return values
