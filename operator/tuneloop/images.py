"""Every container image the operator runs as or launches, for mirroring into a private registry.

    tuneloop images [--config FILE] [--registry HOST[:PORT][/PATH]]

One reference a line, each once, in a fixed order. A ModelDeployment's own `spec.serving.image`
is not here: it is named by the manifest, not by the operator's configuration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuneloop.config import OperatorConfig

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}


def launched_images(config: OperatorConfig) -> list[str]:
    """The operator's image (the feedback service runs it too), trainer, evaluator, vLLM, the adapter
    fetcher and the chart's MLflow server; each once."""
    images = config.images
    return list(dict.fromkeys((images.operator, images.trainer, images.evaluator, images.vllm,
                               images.adapter_fetcher, images.mlflow)))


def split_reference(reference: str) -> tuple[str, str, str]:
    """`[registry/]path[:tag][@digest]` -> (registry, path, `:tag@digest` suffix as written).

    Docker's rule: the first component names a registry only if it has a dot or a port, or is
    `localhost`; otherwise the image is on Docker Hub, where a one-component path means `library/`."""
    name, at, digest = reference.partition("@")
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    tag = name[colon:] if colon > last_slash else ""
    name = name[: len(name) - len(tag)]
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = DOCKER_HUB, name
    if registry in DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    if not path:
        raise ValueError(f"{reference!r} is not an image reference")
    return registry, path, f"{tag}{at}{digest}"


def mirrored(reference: str, registry: str) -> str:
    """The same repository path, tag and digest under another registry (host, port, optional path);
    a reference already under it stays as it is."""
    registry = registry.rstrip("/")
    if reference.startswith(f"{registry}/"):
        return reference
    _, path, suffix = split_reference(reference)
    return f"{registry}/{path}{suffix}"


def check_registry(registry: str) -> str:
    if "://" in registry or not registry.strip("/") or any(char.isspace() for char in registry):
        raise ValueError(f"image registry {registry!r}: give HOST[:PORT][/PATH], without a scheme")
    return registry.rstrip("/")


def image_list(config: OperatorConfig, registry: str | None = None) -> list[str]:
    references = launched_images(config)
    if registry is None:
        return references
    return list(dict.fromkeys(mirrored(reference, registry) for reference in references))
