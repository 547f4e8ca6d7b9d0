"""The registered model's `champion`: which version it is and where its files are."""

from __future__ import annotations

from tuneloop.registry.connection import client, does_not_exist

CHAMPION_ALIAS = "champion"


class ChampionUnavailable(RuntimeError):
    """The champion is asked for (or may exist) but cannot be looked up or fetched."""


def champion_version(tracking_uri: str, name: str) -> tuple[str, str] | None:
    """(version, source) of the alias, None when the registered model or the alias does not exist."""
    mlflow = client(tracking_uri)
    try:
        registered = mlflow.get_registered_model(name)
    except Exception as error:  # also connection refused, DNS, TLS: MLflow wraps them in MlflowException
        if does_not_exist(error):
            return None
        raise ChampionUnavailable(f"MLflow at {tracking_uri} could not be asked for registered model "
                                  f"{name!r}: {error}") from None
    version = (registered.aliases or {}).get(CHAMPION_ALIAS)
    if version is None:
        return None
    try:
        return str(version), mlflow.get_model_version(name, str(version)).source
    except Exception as error:
        raise ChampionUnavailable(f"{name} version {version} (alias {CHAMPION_ALIAS}): {error}") from None
