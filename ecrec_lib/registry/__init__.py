"""MLflow model registry: registration, champion/challenger aliases, the promotion gate.

Scoring calls :func:`resolve_champion` at run time; jobs ``register_model``,
``promote_model`` and ``models`` are the entry points for the rest.
"""

from ecrec_lib.registry.client import (
    CHALLENGER,
    CHAMPION,
    NoChampionError,
    RegistryError,
    RegistryUnreachableError,
    configure_mlflow,
    connect,
    get_alias_version,
    list_versions,
    register_challenger,
    resolve_champion,
    rollback_champion,
    set_champion,
)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "NoChampionError",
    "RegistryError",
    "RegistryUnreachableError",
    "configure_mlflow",
    "connect",
    "get_alias_version",
    "list_versions",
    "register_challenger",
    "resolve_champion",
    "rollback_champion",
    "set_champion",
]
