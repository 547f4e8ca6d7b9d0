"""Which Secrets a tenant's object may hand to Tuneloop, and their values when the operator needs one.

A tenant names Secrets in its objects (a judge's or a teacher's `apiKeySecret`, a schedule's
`feedback.tokenSecret`);
the operator mounts them into the pods it creates or reads them itself. A Secret of the namespace is
usable for a purpose only when

- the namespace has marked it: label `tuneloop.dev/secret-usage` holds the purpose (`judge`, `teacher`,
  `feedback`, or several joined by dots: `judge.feedback`), and the operator may read it (its name is
  in the chart's `rbac.secretNames`); or
- the operator's configuration lists it in `allowedSecrets` (`namespace/name`).

Anything else is refused with a message naming the field, the Secret and what to do, before any pod
mounts it.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from tuneloop.api.evaluation import SecretKeyRef
from tuneloop.config import OperatorConfig
from tuneloop.runtime.kube_client import KubeClient, KubeError

USAGE_LABEL = "tuneloop.dev/secret-usage"
Usage = Literal["judge", "teacher", "feedback"]


class SecretRefused(LookupError):
    """The Secret may not be used for this purpose, or does not hold the key; the message says why."""


def allow_listed(config: OperatorConfig, namespace: str, name: str) -> bool:
    return f"{namespace}/{name}" in config.allowed_secrets


def marked_for(secret: dict[str, Any], usage: Usage) -> bool:
    labels = (secret.get("metadata") or {}).get("labels") or {}
    return usage in labels.get(USAGE_LABEL, "").split(".")


async def usable_secret(client: KubeClient, config: OperatorConfig, namespace: str, reference: SecretKeyRef,
                        usage: Usage, field: str) -> dict[str, Any] | None:
    """The Secret when it may serve `usage` and holds the key; None when the configuration allow-lists it
    but the operator may not read it (a pod can still mount it). SecretRefused otherwise."""
    where = f"{field}: Secret {namespace}/{reference.name}"
    listed = allow_listed(config, namespace, reference.name)
    try:
        secret = await client.get("v1", "Secret", namespace, reference.name)
    except KubeError as error:
        if error.status != 403:
            raise
        if listed:
            return None
        raise SecretRefused(f"{where} may not be read by the operator: ask the cluster admin to add "
                            f"{reference.name!r} to the chart's rbac.secretNames, or {namespace}/{reference.name} "
                            "to the operator's allowedSecrets") from None
    if secret is None:
        raise SecretRefused(f"{where} does not exist")
    if not listed and not marked_for(secret, usage):
        raise SecretRefused(f"{where} is not marked for Tuneloop's {usage} use: label it "
                            f"{USAGE_LABEL}={usage} (kubectl label secret {reference.name} -n {namespace} "
                            f"{USAGE_LABEL}={usage}), or ask the cluster admin to list {namespace}/{reference.name} "
                            "in the operator's allowedSecrets")
    if reference.key not in (secret.get("data") or {}):
        raise SecretRefused(f"{where} has no key {reference.key!r}")
    return secret


async def secret_value(client: KubeClient, config: OperatorConfig, namespace: str, reference: SecretKeyRef,
                       usage: Usage, field: str) -> str:
    """One key of a usable Secret, decoded, for the operator's own use."""
    secret = await usable_secret(client, config, namespace, reference, usage, field)
    if secret is None:
        raise SecretRefused(f"{field}: Secret {namespace}/{reference.name} is allow-listed, but the operator "
                            f"itself must read it here: add {reference.name!r} to the chart's rbac.secretNames")
    try:
        return base64.b64decode(secret["data"][reference.key]).decode().strip()
    except (ValueError, UnicodeDecodeError):
        raise SecretRefused(f"{field}: Secret {namespace}/{reference.name} key {reference.key!r} is not "
                            "UTF-8 text") from None
