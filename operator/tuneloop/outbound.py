"""Where a tenant's object may make Tuneloop send a credential: the judge's and the feedback service's
base URLs. A URL is allowed when

- it names a Service of the object's own namespace, namespace included (`http://judge.team-a:8000/v1`,
  `http://judge.team-a.svc`, `http://judge.team-a.svc.cluster.local`): a bare `http://judge` would
  resolve in the namespace of whoever calls it, the operator's own for the feedback service and the
  rollout analysis; or
- it starts with one of the operator configuration's `allowedUrls` (`https://judge.corp.internal/v1`,
  `http://tuneloop-feedback.tuneloop:8080`), compared by scheme, host, port and whole path segments.

Anything else is refused before a key or a token is sent or mounted. Pure: no I/O.
"""

from __future__ import annotations

from urllib.parse import urlsplit

DNS_LABEL_CHARACTERS = set("abcdefghijklmnopqrstuvwxyz0123456789-")


def _origin_and_path(url: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or ""), port, parts.path.rstrip("/")


def _in_namespace_service(host: str, namespace: str) -> bool:
    labels = host.split(".")
    service, rest = labels[0], labels[1:]
    if not service or not set(service) <= DNS_LABEL_CHARACTERS:
        return False
    return rest in ([namespace], [namespace, "svc"], [namespace, "svc", "cluster", "local"])


def _under(url: str, prefix: str) -> bool:
    scheme, host, port, path = _origin_and_path(url)
    p_scheme, p_host, p_port, p_path = _origin_and_path(prefix)
    return (scheme, host, port) == (p_scheme, p_host, p_port) and (path == p_path or path.startswith(p_path + "/"))


def address_problem(field: str, url: str, namespace: str, allowed_urls: list[str]) -> str | None:
    """None when `url` may receive the object's credentials, else why not (naming the field)."""
    try:
        host = _origin_and_path(url)[1]
        if _in_namespace_service(host, namespace) or any(_under(url, prefix) for prefix in allowed_urls):
            return None
    except ValueError:  # a port that is not a number: urlsplit says so only when asked
        pass
    return (f"{field}: {url!r} is neither a Service of namespace {namespace} (http://NAME.{namespace}[.svc]:PORT) "
            "nor under one of the operator's allowedUrls: ask the cluster admin to allow it")
