"""Which storage URIs a cluster workload can use: pvc:// is mounted (read, or written for the output);
s3:// is fetched into the pod before the workload starts, so it serves inputs only."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

NO_CLUSTER_OUTPUT = "spec.output.uri: a cluster run needs a pvc:// folder for checkpoints and the adapter"


class UnsupportedStorage(ValueError):
    """A storage URI, or a spec, that a cluster workload cannot be given."""


def file_uri_path(uri: str) -> Path:
    """The path of a file:// URI (percent-encoded, as Path.as_uri() writes it)."""
    return Path(unquote(urlparse(uri).path))


def s3_key(uri: str) -> str:
    """The object key of s3://bucket/key; empty for a whole bucket."""
    return uri[len("s3://"):].partition("/")[2]


def cluster_storage_problem(uri: str, *, output: bool = False, one_object: bool = False) -> str | None:
    """Why a cluster workload cannot use `uri`, or None. `output`: it writes there; `one_object`: it reads
    one file there (a dataset), which on S3 must be an object and not a folder."""
    if uri.startswith("pvc://"):
        return None
    if not uri.startswith("s3://"):
        return f"{uri!r} cannot be mounted in a cluster by this version; use pvc://claim/path or s3://bucket/path"
    if output:
        return (f"{uri!r}: the output must be a pvc:// folder (checkpoints must survive a pod restart "
                "on a filesystem); s3:// serves inputs only")
    key = s3_key(uri)
    if one_object and (not key or key.endswith("/")):
        return f"{uri!r} names a folder; give one object, e.g. s3://bucket/path/train.jsonl"
    return None
