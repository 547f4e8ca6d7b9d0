"""The one way a pass writes status, for every kind: a JSON merge patch of the status subresource.

The patch goes from the status as the pass read it to the status it decided, so fields the pass
cleared are sent as null (a merge patch keeps whatever it does not mention), and kopf's own
bookkeeping under status.kopf is left alone.
"""

from __future__ import annotations

from typing import Any

from tuneloop.api.common import API_VERSION, merge_patch_between
from tuneloop.reconcile.core import Resource
from tuneloop.runtime.kube_client import KubeClient, KubeError


async def write_status(client: KubeClient, resource: Resource, status: dict[str, Any]) -> str | None:
    """The resourceVersion the write produced; None when nothing changed or the object is gone."""
    patch = merge_patch_between(dict(resource.stored_status), status)
    if not patch:
        return None
    try:
        written = await client.patch(API_VERSION, resource.kind, resource.namespace, resource.name,
                                     {"status": patch}, subresource="status")
    except KubeError as error:
        if error.status == 404:  # deleted while the pass ran
            return None
        raise
    return written["metadata"].get("resourceVersion")
