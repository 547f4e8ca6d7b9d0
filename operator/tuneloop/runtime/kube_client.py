"""A small async Kubernetes REST client (aiohttp) for the few calls the runtime makes.

It reuses the credentials kopf logged in with (`kopf.ConnectionInfo`), so the operator has one
identity and one place that reads kubeconfigs and service-account tokens.

aiohttp, not httpx like every other outbound call: this client carries the operator's bursts, and
the same client on httpx.AsyncClient (16 connections, HTTP/1.1) cost the operator 1.8 times the CPU
for a burst of 1000 FineTuneJobs on a real API server (15.7 s against 8.5 s, mean of 4 runs of
`benchmarks/operator_scale.py --apiserver --jobs 1000`, 2026-12-03), and the burst took longer.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tuneloop.retry import KUBERNETES_API, RetryPolicy, async_retrying

PLURALS = {"ConfigMap": "configmaps", "Job": "jobs", "Service": "services", "Pod": "pods", "Event": "events",
           "Deployment": "deployments", "PodDisruptionBudget": "poddisruptionbudgets", "Secret": "secrets",
           "FineTuneJob": "finetunejobs", "ModelDeployment": "modeldeployments",
           "FineTuneSchedule": "finetuneschedules", "Workload": "workloads"}
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


class KubeError(RuntimeError):
    def __init__(self, status: int, reason: str, message: str):
        self.status, self.reason = status, reason
        super().__init__(f"{status} {reason}: {message}")


# Requests in flight at once. Each TLS connection holds asyncio's 128 KiB buffer: aiohttp's default of
# 100 cost the operator 16 MiB more peak memory in a burst of 1000 FineTuneJobs on a real API server,
# no faster (benchmarks/README.md).
CONNECTIONS = 16


def worth_retrying(error: BaseException) -> bool:
    """Throttled, a server error, or no answer: a later attempt may succeed."""
    return isinstance(error, KubeError) and (error.status in (0, 429) or error.status >= 500)


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{PLURALS[kind]}"


@dataclass
class KubeClient:
    server: str
    headers: dict[str, str] = field(default_factory=dict)  # Authorization
    ssl_context: ssl.SSLContext | bool = True  # True: the system's CAs
    retry: RetryPolicy = field(default_factory=KUBERNETES_API.model_copy)

    def __post_init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_connection_info(cls, info: Any, retry: RetryPolicy = KUBERNETES_API) -> "KubeClient":
        """kopf's login (service account or kubeconfig; token, basic or client-certificate auth)."""
        return cls(server=info.server.rstrip("/"), headers=info.as_http_headers(), ssl_context=info.as_ssl_context(),
                   retry=retry)

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self.headers,
                                                  connector=aiohttp.TCPConnector(ssl=self.ssl_context, limit=CONNECTIONS),
                                                  timeout=aiohttp.ClientTimeout(total=self.retry.timeout_seconds))
        return self._session

    async def _request_once(self, method: str, path: str, **kwargs: Any) -> Any:
        # A new session when the last one was closed (by a cleanup) while this request waited.
        session = self._open_session()
        try:
            async with session.request(method, self.server + path, **kwargs) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as failure:
            raise KubeError(0, "Unreachable", str(failure)) from None
        if response.status < 400:
            return body
        body = body or {}
        raise KubeError(response.status, body.get("reason", response.reason or ""), body.get("message", ""))

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        return await async_retrying(self.retry, worth_retrying)(self._request_once, method, path, **kwargs)

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """POST the object as it is (a generateName'd one gets its name from the server)."""
        path = collection_path(obj["apiVersion"], obj["kind"], obj["metadata"]["namespace"])
        return await self._request("POST", path, json=obj)

    async def create_if_absent(self, obj: dict[str, Any]) -> bool:
        """True when created; False when an object of that name already exists (a repeated reconcile)."""
        try:
            await self.create(obj)
        except KubeError as error:
            if error.status == 409:
                return False
            raise
        return True

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._request("GET", f"{collection_path(api_version, kind, namespace)}/{name}")
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    async def patch(self, api_version: str, kind: str, namespace: str, name: str,
                    patch: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        """JSON merge patch (RFC 7386): dicts merge, null deletes, lists are replaced. With
        subresource="status", the status subresource (the main resource ignores status)."""
        path = f"{collection_path(api_version, kind, namespace)}/{name}" + (f"/{subresource}" if subresource else "")
        return await self._request("PATCH", path, json=patch, headers=MERGE_PATCH)

    async def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT the whole object; with metadata.resourceVersion it fails (409) if the object changed meanwhile."""
        meta = obj["metadata"]
        path = f"{collection_path(obj['apiVersion'], obj['kind'], meta['namespace'])}/{meta['name']}"
        return await self._request("PUT", path, json=obj)

    async def delete(self, api_version: str, kind: str, namespace: str, name: str,
                     propagation: str = "Background") -> bool:
        """True when deleted; False when it was not there. Dependents (a Job's pods) go in the background, or
        with propagation="Foreground" first: the object stays, with a deletionTimestamp, until they are gone."""
        try:
            await self._request("DELETE", f"{collection_path(api_version, kind, namespace)}/{name}",
                                json={"propagationPolicy": propagation})
        except KubeError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def list(self, api_version: str, kind: str, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        body = await self._request("GET", collection_path(api_version, kind, namespace),
                                   params={"labelSelector": label_selector})
        return body.get("items", [])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
