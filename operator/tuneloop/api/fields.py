"""Field types the three kinds share: what Kubernetes and the workloads accept.

Each is checked by pydantic with a message that names the problem, and stated in the JSON Schema
(`pattern`, `maxLength`, CEL) from which the CRDs are generated, so the API server refuses the same
values. The patterns are written for both Python's `re` and Go's RE2 (no look-arounds; character
sets rather than backslash classes), because the API server evaluates them in Go.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal

import re2
from pydantic import AfterValidator, Field

from tuneloop.api.common import HTTP_URL, WireModel, check_http_url, shown

MAX_TEXT = 65536  # a system prompt, a rubric, a smoke prompt: generous, and far below the object limit
MAX_URI = 4096


def _matching(regex: str, message: str) -> AfterValidator:
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{shown(value)} {message}")
        return value
    return AfterValidator(check)


def checked_string(regex: str, message: str, max_length: int) -> Any:
    """A string type: at most `max_length` characters, matching `regex` (anchored)."""
    return Annotated[str, Field(max_length=max_length, json_schema_extra={"pattern": regex}),
                     _matching(regex, message)]


DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ResourceName = checked_string(DNS1123_SUBDOMAIN, "must be a DNS-1123 subdomain: at most 253 lowercase letters, "
                              "digits, '-' and '.', starting and ending with a letter or digit", 253)
SecretKey = checked_string(r"^[-._a-zA-Z0-9]+$", "must be a Secret key: letters, digits, '-', '_' and '.'", 253)
EnvName = checked_string(r"^[A-Za-z_][A-Za-z0-9_]*$", "must be an environment variable name: letters, digits "
                         "and '_', not starting with a digit", 256)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LabelValue = checked_string(LABEL_VALUE, "must be a label value: at most 63 letters, digits, '-', '_' and '.', "
                            "starting and ending with a letter or digit", 63)
# A label or annotation key: an optional DNS subdomain prefix and '/', then a name of at most 63.
_LABEL_KEY = (r"([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
              r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
LABEL_KEY = f"^{_LABEL_KEY}$"
LABEL_KEY_MESSAGE = ("must be a label key: an optional DNS subdomain prefix and '/', then at most 63 letters, "
                     "digits, '-', '_' and '.', starting and ending with a letter or digit")


def _label_keys(labels: dict[str, str]) -> dict[str, str]:
    for key in labels:
        prefix, _, name = key.rpartition("/")
        if not re.fullmatch(LABEL_KEY, key) or len(name) > 63 or len(prefix) > 253:
            raise ValueError(f"{shown(key)} {LABEL_KEY_MESSAGE}")
    return labels


def label_map(values: Any, description: str) -> Any:
    """A map whose keys are label keys (a node selector, labels, annotations). The keys are checked
    here only: a schema has no maxLength for map keys, so a CEL rule over them has no bounded cost
    and the API server would refuse the CRD. At most 64 entries."""
    return Annotated[dict[str, values], Field(default_factory=dict, max_length=64, description=description,
                                              json_schema_extra={"default": {}}),
                     AfterValidator(_label_keys)]


# Kubernetes' resource.Quantity, not negative: 8, 500m, 64Gi, 1.5e3.
Quantity = checked_string(r"^[+]?([0-9]+([.][0-9]*)?|[.][0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9]+)?$",
                          "must be a Kubernetes quantity that is not negative, e.g. 8, 500m, 64Gi", 64)

# The container image reference grammar (github.com/distribution/reference).
_COMPONENT = r"[a-z0-9]+((?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN_PART = r"([a-zA-Z0-9]|[a-zA-Z0-9][-a-zA-Z0-9]*[a-zA-Z0-9])"
IMAGE_REFERENCE = (rf"^({_DOMAIN_PART}([.]{_DOMAIN_PART})*(:[0-9]+)?/)?{_COMPONENT}(/{_COMPONENT})*"
                   r"(:[A-Za-z0-9_][-A-Za-z0-9_.]{0,127})?(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*"
                   r":[0-9a-fA-F]{32,})?$")
ImageReference = checked_string(IMAGE_REFERENCE, "is not a container image reference "
                                "([registry[:port]/]repository[:tag][@digest], lowercase repository)", 512)

Text = Annotated[str, Field(max_length=MAX_TEXT)]
Name = Annotated[str, Field(min_length=1, max_length=253)]

# Seeds reach numpy's legacy seeding (transformers.set_seed), which takes 0 .. 2**32 - 1.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]

STORAGE_SCHEMES = ("file://", "pvc://", "s3://")
TRAVERSAL = re.compile(r"(^|/)[.][.](/|$)")
NO_CONTROL_CHARACTERS = "^[^\\x00-\\x1f\\x7f]*$"


def check_storage_uri(uri: str) -> str:
    """Storage URIs are `pvc://claim/path`, `s3://bucket/path` or `file:///path`; in local mode a
    plain path (relative to the manifest) is accepted too. None climbs out with `..`."""
    if not uri.strip():
        raise ValueError("must not be empty")
    if not re.fullmatch(NO_CONTROL_CHARACTERS, uri):
        raise ValueError(f"{shown(uri)} contains a control character (a line break, a tab, NUL)")
    if TRAVERSAL.search(uri):
        raise ValueError(f"{shown(uri)} has a '..' segment: a storage URI may not climb out of its claim, "
                         "bucket or folder")
    if "://" in uri and not uri.startswith(STORAGE_SCHEMES):
        raise ValueError(f"unsupported URI scheme in {shown(uri)}: use pvc://, s3:// or file://")
    if uri.startswith(("pvc://", "s3://")) and not uri.split("://", 1)[1].split("/")[0]:
        raise ValueError(f"{shown(uri)} names no claim or bucket")
    return uri


StorageUri = Annotated[str, Field(min_length=1, max_length=MAX_URI, json_schema_extra={
    "pattern": NO_CONTROL_CHARACTERS,
    "x-kubernetes-validations": [
        {"rule": "!self.matches('(^|/)[.][.](/|$)')", "message": "a storage URI may not have a '..' segment"},
        {"rule": "!self.contains('://') || self.startsWith('pvc://') || self.startsWith('s3://') "
                 "|| self.startsWith('file://')", "message": "use pvc://, s3:// or file://"},
        {"rule": "!(self.startsWith('pvc://') || self.startsWith('s3://')) || self.matches('^[a-z0-9]+://[^/]')",
         "message": "a pvc:// or s3:// URI names its claim or bucket first"}]}),
    AfterValidator(check_storage_uri)]


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the error is ours to report, not absl's to print


@functools.lru_cache(maxsize=256)  # an analysis matches the same few patterns against every answer
def linear_pattern(regex: str) -> Any:
    """A tenant's regular expression compiled by RE2: matched in time linear in the text, so no
    pattern (`^(a+)+$`) can stall the operator's event loop. ValueError says why RE2 refuses one
    (a backreference, a look-around, a syntax error)."""
    try:
        return re2.compile(regex, _RE2_OPTIONS)
    except re2.error as error:
        reason = error.args[0].decode(errors="replace") if error.args and isinstance(error.args[0], bytes) else error
        raise ValueError(f"not a regular expression RE2 accepts ({reason}); RE2 matches in linear time and has "
                         "no backreferences or look-arounds") from None


TaintKey = checked_string(f"^({_LABEL_KEY})?$", LABEL_KEY_MESSAGE, 317)


HttpUrl = Annotated[str, Field(max_length=2048, json_schema_extra={"pattern": HTTP_URL}), AfterValidator(check_http_url)]


class Toleration(WireModel):
    """A pod toleration, as Kubernetes takes it."""

    key: TaintKey | None = Field(None, description="Taint key; empty with operator Exists: every taint.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists: any value; Equal: value must match.")
    value: LabelValue | None = Field(None, description="Taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate; unset: all.")
    toleration_seconds: int | None = Field(None, ge=0, le=2**31, description="NoExecute: how long the pod stays "
                                                                            "after the taint appears.")
