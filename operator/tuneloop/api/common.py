"""Shared pieces of the Tuneloop API: camelCase wire models, conditions, validation errors."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

GROUP = "tuneloop.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are an error, not ignored. Types are
    strict, as the API server's schema is: `epochs: true` or `seed: "7"` is refused, not coerced;
    numbers are finite (JSON cannot carry .nan or .inf, so neither can a custom resource)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", strict=True,
                              allow_inf_nan=False)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


M = TypeVar("M", bound=WireModel)


class Condition(WireModel):
    """A Kubernetes-shaped status condition (metav1.Condition)."""

    type: str = Field(description="What the condition reports, e.g. Ready, Stalled, GatePassed; at most one of "
                                  "each type.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="One CamelCase word a program can match, e.g. GateFailed.")
    message: str = Field("", description="What a person needs to know, with the numbers.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, description="metadata.generation the condition was set from.")


# A list-map keyed by type, as metav1.Condition lists are: server-side apply merges by type and the API
# server refuses two conditions of one type.
Conditions = Annotated[list[Condition], Field(
    default_factory=list, json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    description="Current observations of the object's state. Ready is True when it is done and good (kstatus); "
                "Reconciling while work goes on; Stalled when it cannot go on without a change.")]


def rfc3339(moment: datetime) -> str:
    """A Kubernetes timestamp: UTC, whole seconds, `Z`."""
    return moment.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def duration(seconds: float) -> str:
    """A span as people read it: 45s, 4m10s, 1h02m, 3d4h (the precision a status line needs)."""
    whole = max(int(round(seconds)), 0)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def now_rfc3339() -> str:
    return rfc3339(datetime.now(timezone.utc))


def set_condition(
    conditions: list[Condition],
    type: str,
    status: Literal["True", "False", "Unknown"],
    reason: str,
    message: str = "",
    *,
    observed_generation: int | None = None,
    now: str | None = None,
) -> list[Condition]:
    """Return conditions with `type` set; lastTransitionTime moves only when the status changes."""
    previous = next((c for c in conditions if c.type == type), None)
    transition = previous.last_transition_time if previous and previous.status == status else (now or now_rfc3339())
    updated = Condition(
        type=type, status=status, reason=reason, message=message,
        last_transition_time=transition, observed_generation=observed_generation,
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if c.type == type else c for c in conditions]  # in place: no churn in the stored order


def remove_condition(conditions: list[Condition], type: str) -> list[Condition]:
    return [c for c in conditions if c.type != type]


def get_condition(conditions: list[Condition], type: str) -> Condition | None:
    return next((c for c in conditions if c.type == type), None)


MAX_LABEL = 63  # a label value, and a DNS-1123 label such as a Service's or a Pod's generated name
# What a Service may be named (RFC 1035 label): lowercase letters, digits and '-', a letter first.
DNS1035_LABEL = "^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1035_MESSAGE = ("must be a DNS-1035 label: at most 63 lowercase letters, digits and '-', starting with a letter "
                   "and ending with a letter or digit")


def check_service_name(name: str) -> str:
    if len(name) > MAX_LABEL or not re.match(DNS1035_LABEL, name):
        shown = repr(name) if len(name) <= 80 else f"{name[:60]!r}... ({len(name)} characters)"
        raise ValueError(f"{shown} {DNS1035_MESSAGE}")
    return name


def fitted(text: str, limit: int = MAX_LABEL) -> str:
    """`text` when it fits in `limit` characters, else its start and a digest of the whole: deterministic,
    distinct for distinct texts, ending in an alphanumeric. For label values and derived names."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{text[: limit - len(digest) - 1]}-{digest}"


def child_name(parent: str, suffix: str, limit: int = MAX_LABEL) -> str:
    """`<parent>-<suffix>` within `limit`, the suffix kept whole (a colour, a stage)."""
    return f"{fitted(parent, limit - len(suffix) - 1)}-{suffix}"


# A base URL that paths are appended to: no query or fragment (they would swallow the path) and no
# credentials (keys come from Secrets); no spaces or control characters.
HTTP_URL = "^https?://[^\\x00-\\x20\\x7f?#@\\\\]+$"


def check_http_url(url: str) -> str:
    """A service's base URL: http(s), without the trailing slash (paths are appended to it)."""
    if not re.fullmatch(HTTP_URL, url):
        raise ValueError(f"{url[:200]!r} is not an http(s) base URL (no query '?', fragment '#', credentials '@', "
                         "backslash, spaces or control characters)")
    return url.rstrip("/")


class SpecError(ValueError):
    """A manifest that cannot be accepted; each problem names its field path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def field_path(prefix: str, loc: tuple[Any, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part:
            path = f"{path}.{part}" if path else str(part)
    return path


def describe_validation_error(error: ValidationError, prefix: str) -> list[str]:
    """Turn pydantic's errors into `spec.method.lora.r: must be >= 1` style lines."""
    problems = []
    for item in error.errors():
        # Model-level validators report under the model; union branches add a tag we drop.
        loc = tuple(part for part in item["loc"] if not (isinstance(part, str) and "[" in part and part.endswith("]")))
        path = field_path(prefix, loc)
        problems.append(f"{path}: {humanize(item)}" if path else humanize(item))  # a whole manifest's rule names its fields
    return problems


TYPE_NAMES = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
              "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
              "bool_parsing": "true or false", "string_type": "a string", "model_type": "a mapping",
              "model_attributes_type": "a mapping", "dict_type": "a mapping", "list_type": "a list"}


def shown(value: Any) -> str:
    """A value as a manifest's author wrote it, short."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, float) and value != value:
        return ".nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}... ({len(str(value))} characters)"


def humanize(item: dict[str, Any]) -> str:
    kind, ctx = item["type"], item.get("ctx") or {}
    if kind in TYPE_NAMES:
        return f"must be {TYPE_NAMES[kind]}, not {shown(item.get('input'))}"
    if kind == "finite_number":
        return f"must be a finite number, not {shown(item.get('input'))}"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters, not {len(item.get('input') or '')}"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"must be at least {ctx['min_length']} characters"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} item(s)"
    bounds = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
              "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}
    if kind in bounds:
        operator, key = bounds[kind]
        return f"must be {operator} {ctx[key]:g}"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} item(s)"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}"
    if kind == "value_error":
        return str(ctx.get("error", item["msg"]))
    return item["msg"][0].lower() + item["msg"][1:]


def merge_patch_between(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: keys gone from `new` become null."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = merge_patch_between(before, value)
            if nested:
                patch[key] = nested
        elif value != before:
            patch[key] = value
    return patch


def validated(model: type[M], raw: Any, prefix: str) -> M:
    """`raw` as `model` (wire names only); SpecError lists every problem with its path under `prefix`."""
    try:
        return model.model_validate(raw, by_alias=True, by_name=False)
    except ValidationError as error:
        raise SpecError(describe_validation_error(error, prefix)) from None


MAX_OBJECT_BYTES = 1_572_864  # etcd's default request limit: the largest object Kubernetes stores


def validated_manifest(model: type[M], raw: Any) -> M:
    """A whole manifest (apiVersion, kind, metadata, spec) as `model`; its size is checked too."""
    if not isinstance(raw, dict):
        raise SpecError(["manifest: must be a mapping with apiVersion, kind, metadata and spec"])
    size = len(json.dumps(raw, default=str).encode())
    too_large = [f"manifest: {size:,} bytes as JSON; Kubernetes stores at most {MAX_OBJECT_BYTES:,} bytes "
                 "(1.5 MiB) per object"] if size > MAX_OBJECT_BYTES else []
    try:
        parsed = validated(model, raw, "")
    except SpecError as error:
        raise SpecError(too_large + error.problems) from None
    if too_large:
        raise SpecError(too_large)
    return parsed
