"""Settings: read once from the task, the app's config and the environment.

Precedence: per-task option (``@app.task(claim_lease_seconds=...)``) >
``app.conf.claim_*`` > environment (``CELERY_CLAIM_*``) > default. Unknown
``claim_*`` names are an error with a "did you mean".
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

from celery_claim import errors, sql
from celery_claim.keys import DEFAULT_KEY
from celery_claim.states import OnFailure

__all__ = ["OPTIONS", "ClaimSettings", "check_names", "from_sources", "validate"]

OnRunning = Literal["defer", "skip", "raise"]

ENV_PREFIX = "CELERY_CLAIM_"
logger = logging.getLogger("celery_claim")


@dataclasses.dataclass(frozen=True)
class ClaimSettings:
    """The resolved settings of one task. Field names drop the ``claim_`` prefix."""

    database_url: str | None = None
    engine: Any = None
    #: A Django ``DATABASES`` alias: the claim runs on Django's own connection.
    django_database: str | None = None
    table: str = sql.DEFAULT_TABLE
    key: str | Callable[..., str] = DEFAULT_KEY
    lease_seconds: float = 60.0
    heartbeat: bool = True
    on_running: OnRunning = "defer"
    on_failure: OnFailure = OnFailure.RETRY
    store_result: bool = True
    check_payload: bool = True
    ttl_seconds: float = 7 * 24 * 3600.0
    create_schema: bool = True
    coalesce: bool = True
    enabled: bool = True

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between lease renewals: a third of the lease."""
        return self.lease_seconds / 3


#: Every public setting name (``claim_`` + field).
OPTIONS: tuple[str, ...] = tuple(f"claim_{f.name}" for f in dataclasses.fields(ClaimSettings))
_DEFAULTS = ClaimSettings()


def check_names(names: Any, where: str) -> None:
    """Raise for any ``claim_*`` name that is not a setting, with a suggestion."""
    for name in names:
        if not isinstance(name, str) or not name.lower().startswith("claim_"):
            continue
        if name.lower() in OPTIONS:
            continue
        close = difflib.get_close_matches(name.lower(), OPTIONS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(OPTIONS)}"
        raise errors.ClaimConfigurationError(f"unknown setting {name!r} in {where}{hint}")


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise errors.ClaimConfigurationError(f"{name} must be a boolean", value=value)


def _as_seconds(name: str, value: Any, minimum: float) -> float:
    try:
        seconds = float(value.total_seconds() if hasattr(value, "total_seconds") else value)
    except (TypeError, ValueError):
        raise errors.ClaimConfigurationError(
            f"{name} must be a number of seconds", value=value) from None
    if isinstance(value, bool) or not seconds >= minimum or seconds == float("inf"):
        raise errors.ClaimConfigurationError(
            f"{name} must be at least {minimum:g} seconds", value=value)
    return seconds


def _as_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise errors.ClaimConfigurationError(
            f"{name} must be one of {', '.join(map(repr, choices))}{hint}", value=value)
    return str(value)


def validate(name: str, value: Any) -> Any:
    """Check one setting's value; returns it normalised."""
    field = name.removeprefix("claim_")
    if field in ("heartbeat", "store_result", "check_payload", "create_schema", "coalesce",
                 "enabled"):
        return _as_bool(name, value)
    if field == "lease_seconds":
        return _as_seconds(name, value, minimum=1.0)
    if field == "ttl_seconds":
        return _as_seconds(name, value, minimum=0.0)
    if field == "on_running":
        return _as_choice(name, value, ("defer", "skip", "raise"))
    if field == "on_failure":
        if value == "release":
            warnings.warn(f"{name}='release' is now spelled 'retry' (the claim is marked "
                          f"failed, and a later delivery may take it and run again); "
                          f"'release' stops working in a later release",
                          DeprecationWarning, stacklevel=3)
            value = OnFailure.RETRY
        return OnFailure(_as_choice(name, value, tuple(m.value for m in OnFailure)))
    if field == "table":
        sql.parse_table_name(value)
        return value
    if field == "database_url":
        if not isinstance(value, str) or "://" not in value:
            raise errors.ClaimConfigurationError(
                "claim_database_url must be an SQLAlchemy URL such as "
                "'postgresql+psycopg://user@host/db' or 'sqlite:///claims.db'", value=value)
        return value
    if field == "django_database" and not (isinstance(value, str) and value):
        raise errors.ClaimConfigurationError(
            "claim_django_database must name a Django DATABASES alias, such as 'default'",
            value=value)
    if field == "key" and not (isinstance(value, str) or callable(value)):
        raise errors.ClaimConfigurationError(
            "claim_key must be a format string or a callable", value=value)
    return value


def _environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """``CELERY_CLAIM_*`` variables that name a setting.

    Other variables with the prefix are not ours to reject (the prefix
    ``CELERY_CLAIM_TEST_`` is used by test suites); a near miss of a setting's
    name is logged once, with the suggestion.
    """
    found = {}
    for env_name, value in environ.items():
        if not env_name.startswith(ENV_PREFIX):
            continue
        name = "claim_" + env_name[len(ENV_PREFIX):].lower()
        if name in OPTIONS:
            if name not in ("claim_engine", "claim_key"):
                found[name] = value
        elif not env_name.startswith(ENV_PREFIX + "TEST_") and env_name not in _warned:
            _warned.add(env_name)
            close = difflib.get_close_matches(name, OPTIONS, n=1)
            if close:
                logger.warning("environment variable %s is not a celery-claim setting; "
                               "did you mean %s?", env_name, ENV_PREFIX + close[0][6:].upper())
    return found


_warned: set[str] = set()


def app_config(conf: Mapping[str, Any]) -> dict[str, Any]:
    """The ``claim_*`` settings present in a Celery app's ``conf``.

    With ``namespace="CELERY"`` (Django) the keys are ``CELERY_CLAIM_*``;
    Celery's ``conf.get`` maps them to ``claim_*``.
    """
    for name in list(conf.keys()):
        lowered = str(name).lower()
        if lowered.startswith("celery_claim_"):
            lowered = lowered[len("celery_"):]
        if lowered.startswith("claim_"):
            check_names([lowered], "the Celery configuration")
    found: dict[str, Any] = {}
    for option in OPTIONS:
        value = conf.get(option)
        if value is not None:
            found[option] = value
    return found


def _check_one_store(merged: Mapping[str, Any]) -> None:
    given = [name for name in ("claim_django_database", "claim_database_url", "claim_engine")
             if merged.get(name) is not None]
    if "claim_django_database" in given and len(given) > 1:
        raise errors.ClaimConfigurationError(
            "claim_django_database puts the claim on Django's connection: do not also set "
            f"{' or '.join(given[1:])} (choose one claim store)")
    if given == ["claim_database_url", "claim_engine"]:
        raise errors.ClaimConfigurationError(
            "claim_engine and claim_database_url both name a claim store: keep claim_engine "
            "(the application's engine) and drop claim_database_url, or the other way round")


def from_sources(task_options: Mapping[str, Any], conf: Mapping[str, Any],
                 environ: Mapping[str, str] | None = None) -> ClaimSettings:
    """Resolve settings by precedence and validate every value."""
    check_names(task_options, "the task's options")
    merged: dict[str, Any] = _environment(os.environ if environ is None else environ)
    configured = {**app_config(conf), **{k: v for k, v in task_options.items() if v is not None}}
    if (configured.get("claim_django_database") is not None
            or configured.get("claim_engine") is not None):
        merged.pop("claim_database_url", None)  # the environment yields to the configuration
    merged.update(configured)
    _check_one_store(merged)
    values = {name.removeprefix("claim_"): validate(name, value)
              for name, value in merged.items()}
    settings = dataclasses.replace(_DEFAULTS, **values)
    if (settings.enabled and settings.engine is None and settings.database_url is None
            and settings.django_database is None):
        raise errors.ClaimConfigurationError(
            "no claim store configured: set app.conf.claim_database_url (or the environment "
            "variable CELERY_CLAIM_DATABASE_URL) to an SQLAlchemy URL, or claim_engine to an "
            "Engine")
    return settings
