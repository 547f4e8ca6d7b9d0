"""Which MLflow model version an alias (e.g. `champion`) points at, for ModelDeployments that follow one,
and the LoRA options a version was trained with (so a server that cannot load it is named first).

Aliases are polled: every lookup older than `poll_seconds` asks MLflow again (REST for a tracking
server, MlflowClient for a SQLite file, as in progress.py). MLflow's registry webhooks
(model_version_alias.created/deleted, see webhooks.py) mark a cached alias stale at once,
so a moved alias does not wait for the poll period. While MLflow cannot be asked, the last known version is
kept: a registry outage must not stop or change what serves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuneloop.api.modeldeployment import LORA_TAG
from tuneloop.retry import MLFLOW_REST, RetryPolicy, async_retrying, no_answer
from tuneloop.registry.connection import client, does_not_exist, is_server, mlflow_http

log = logging.getLogger("tuneloop.aliases")


class AliasLookupFailed(RuntimeError):
    """MLflow could not be asked (unreachable, refused, or answered nonsense)."""


async def _rest_model_version(tracking_uri: str, retry: RetryPolicy, path: str, params: dict[str, str]) -> dict | None:
    """A model version as MLflow's REST API answers `path`; None when there is none (404)."""
    async with mlflow_http(retry) as http:
        response = await http.get(tracking_uri.rstrip("/") + path, params=params)
    if response.status_code == 404:
        return None
    if response.status_code >= 400:
        raise AliasLookupFailed(f"HTTP {response.status_code}: {response.text[:200]}")
    return response.json()["model_version"]


def _client_model_version(tracking_uri: str, lookup: str, *args: str) -> Any:
    """A model version from MlflowClient (`lookup`: its method's name); None when there is none."""
    try:
        return getattr(client(tracking_uri), lookup)(*args)
    except Exception as error:
        if does_not_exist(error):
            return None
        raise


async def _rest_alias(tracking_uri: str, retry: RetryPolicy, model: str, alias: str) -> str | None:
    found = await _rest_model_version(tracking_uri, retry, "/api/2.0/mlflow/registered-models/alias",
                                      {"name": model, "alias": alias})
    return None if found is None else str(found["version"])  # None: no such model, or the alias is not set


def _client_alias(tracking_uri: str, model: str, alias: str) -> str | None:
    found = _client_model_version(tracking_uri, "get_model_version_by_alias", model, alias)
    return None if found is None else str(found.version)


async def _rest_version_tags(tracking_uri: str, retry: RetryPolicy, model: str, version: str) -> dict[str, str] | None:
    found = await _rest_model_version(tracking_uri, retry, "/api/2.0/mlflow/model-versions/get",
                                      {"name": model, "version": version})
    return None if found is None else {tag["key"]: tag.get("value", "") for tag in found.get("tags") or []}


def _client_version_tags(tracking_uri: str, model: str, version: str) -> dict[str, str] | None:
    found = _client_model_version(tracking_uri, "get_model_version", model, version)
    return None if found is None else dict(found.tags)


@dataclass
class Lookup:
    version: str | None
    at: float


@dataclass
class AliasResolver:
    tracking_uri: str | None
    poll_seconds: float = 30.0
    retry: RetryPolicy = field(default_factory=MLFLOW_REST.model_copy)
    clock: Callable[[], float] = time.monotonic
    known: dict[tuple[str, str], Lookup] = field(default_factory=dict)
    problems: dict[tuple[str, str], str] = field(default_factory=dict)  # the last failed lookup's reason
    options: dict[tuple[str, str], dict | None] = field(default_factory=dict)  # (model, version): LoRA options

    async def resolve(self, model: str, alias: str) -> str | None:
        """The version `alias` points at; None while it is unset (or MLflow was never reachable)."""
        key = (model, alias)
        cached = self.known.get(key)
        if cached is not None and self.clock() - cached.at < self.poll_seconds:
            return cached.version
        if not self.tracking_uri:
            self.problems[key] = "the operator has no mlflowTrackingUri"
            return None
        try:
            version = await self._ask(_rest_alias, _client_alias, model, alias)
        except Exception as error:  # keep what serves; say why nothing new arrives
            self.problems[key] = f"MLflow at {self.tracking_uri} could not be asked: {error}"
            log.warning("alias %s@%s: %s", model, alias, self.problems[key])
            if cached is not None:
                cached.at = self.clock()  # ask again after a poll period, not on every pass
            else:
                self.known[key] = Lookup(None, self.clock())
            return cached.version if cached is not None else None
        self.problems.pop(key, None)
        self.learn(model, alias, version)
        return version

    async def _ask(self, rest: Callable, client: Callable, *args: str) -> Any:
        """REST for a tracking server; MlflowClient (in a thread) for a SQLite file."""
        if is_server(self.tracking_uri):
            return await async_retrying(self.retry, no_answer)(rest, self.tracking_uri, self.retry, *args)
        return await asyncio.to_thread(client, self.tracking_uri, *args)

    async def adapter_options(self, model: str, version: str) -> dict | None:
        """The LoRA options a registered version was trained with (its tuneloop.dev/lora tag); None when
        it has none or MLflow cannot be asked now (then asked again on a later pass). Kept once found."""
        key = (model, version)
        if key in self.options:
            return self.options[key]
        if not self.tracking_uri:
            return None
        try:
            tags = await self._ask(_rest_version_tags, _client_version_tags, model, version)
            if tags is None:
                return None  # not registered (yet): asked again on a later pass
            options = json.loads(tags[LORA_TAG]) if LORA_TAG in tags else None
        except Exception as error:
            log.warning("model %s version %s: its LoRA options could not be read: %s", model, version, error)
            return None
        self.options[key] = options if isinstance(options, dict) else None
        return self.options[key]

    def learn(self, model: str, alias: str, version: str | None) -> None:
        """What MLflow said; None: the alias is not set."""
        self.known[(model, alias)] = Lookup(version, self.clock())

    def forget(self, model: str, alias: str) -> None:
        """The alias changed (a webhook said so): the next resolve() asks MLflow, whatever the poll period."""
        cached = self.known.get((model, alias))
        if cached is not None:
            cached.at = float("-inf")

    def problem(self, model: str, alias: str) -> str | None:
        return self.problems.get((model, alias))


class AliasNotFound(LookupError):
    """The registered model or its alias does not exist, or MLflow could not be asked; the message says which."""


def version_of_alias(tracking_uri: str | None, model: str, alias: str) -> str:
    """The version (as a string, e.g. '7') that alias of the registered model points at now (blocking)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client(tracking_uri).get_model_version_by_alias(model, alias).version)
    except MlflowException as error:
        raise AliasNotFound(f"MLflow {tracking_uri or '(default tracking URI)'}: cannot resolve "
                            f"{model}@{alias}: {error.message}") from None
