"""Where one proof run lives, and the Celery settings its app is built with.

The parent process builds a :class:`RunConfig` (a subclass per kind of run),
passes it to the workers through :meth:`RunConfig.env`, and each worker
rebuilds it with :meth:`RunConfig.from_env` when it imports the run's app
module. ``name`` keeps runs apart: tables, queue, Redis keys and worker names
all carry it, so runs can share one database and one Redis.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa
from celery import Celery

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["SWEEP_LOCK_SECONDS", "RunConfig", "RunTables", "for_app"]

#: The life of kombu's sweep lock in Redis (``unacked_mutex_expire``) in a run:
#: a little above what a sweep of a run's queue takes.
SWEEP_LOCK_SECONDS = 5


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One run's place: its name, claim store and broker. Subclasses add their knobs.

    ``kind`` (``"demo"``, ``"soak"``) names the environment variables
    (``CLAIM_DEMO_NAME``, ...), the queue (``claim-demo-<name>``), the claims
    table (``celery_claims_demo_<name>``) and the prefix of the run's own
    tables (``claim_demo_<name>_``).
    """

    kind: ClassVar[str] = "run"

    name: str
    database_url: str
    broker_url: str
    #: ``claim_lease_seconds`` of the ClaimTask.
    lease: float = 5.0
    #: Redis ``visibility_timeout``: a killed worker's messages come back after it.
    visibility_timeout: float = 20.0
    #: Each body works for a random time up to this, after its effect.
    body_seconds: float = 0.002
    #: Both versions "call the provider" for this long before writing their
    #: effect: in the naive version, the time between the check and the act.
    race_seconds: float = 0.0

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable that carries ``field`` to the workers."""
        return f"CLAIM_{cls.kind.upper()}_{field.upper()}"

    @classmethod
    def from_env(cls) -> Self:
        """The config :meth:`env` wrote, read back in a worker."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = os.environ.get(cls.variable(field.name))
            if raw is not None:
                values[field.name] = float(raw) if field.type == "float" else raw
        return cls(**values)

    def env(self) -> dict[str, str]:
        """The environment a worker needs to rebuild this config."""
        found = {self.variable(field.name): str(getattr(self, field.name))
                 for field in dataclasses.fields(self)}
        return {**found, "CELERY_BROKER_URL": self.broker_url}

    @property
    def queue(self) -> str:
        return f"claim-{self.kind}-{self.name}"

    @property
    def key_prefix(self) -> str:
        """kombu's ``global_keyprefix`` on Redis, and the prefix of the run's own keys."""
        return f"{self.queue}:"

    @property
    def claims_table(self) -> str:
        return f"celery_claims_{self.kind}_{self.name}"

    @property
    def table_prefix(self) -> str:
        return f"claim_{self.kind}_{self.name}"

    def transport_options(self) -> dict[str, Any]:
        """``broker_transport_options``: on Redis, the run's own key prefix and timeout."""
        if self.broker_url.startswith("redis"):
            # Sweep for messages past their visibility timeout every second.
            # The sweep's lock in Redis outlives a worker killed while it
            # holds it: at kombu's default (300 s) one such kill holds every
            # sweep off for five minutes, and the run waits that long.
            return {"global_keyprefix": self.key_prefix,
                    "visibility_timeout": self.visibility_timeout,
                    "unacked_restore_interval": 1, "unacked_restore_throttle": 1,
                    "unacked_mutex_expire": SWEEP_LOCK_SECONDS}
        return {}

    def celery_settings(self) -> dict[str, Any]:
        """The app's configuration: one queue, no results, no remote control, the claims table."""
        return {
            "broker_transport_options": self.transport_options(),
            "broker_connection_retry_on_startup": True,
            "task_default_queue": self.queue,
            "task_ignore_result": True,
            "worker_prefetch_multiplier": 1,
            "worker_enable_remote_control": False,
            "worker_send_task_events": False,
            "worker_hijack_root_logger": False,
            "claim_database_url": self.database_url,
            "claim_table": self.claims_table,
            "claim_lease_seconds": self.lease,
        }

    def celery_app(self, main: str) -> Celery:
        """A Celery app configured for this run (tasks are the caller's to add)."""
        app = Celery(main, broker=self.broker_url, set_as_current=False)
        app.conf.update(self.celery_settings())
        return app


class RunTables:
    """The run's own tables, named ``<table_prefix>_<suffix>``, in one ``MetaData``."""

    def __init__(self, config: RunConfig) -> None:
        self.metadata = sa.MetaData()
        self.prefix = config.table_prefix

    def table(self, suffix: str, *columns: sa.Column[Any]) -> sa.Table:
        return sa.Table(f"{self.prefix}_{suffix}", self.metadata, *columns)


def for_app(app: Celery, receiver: Callable[..., None]) -> Callable[..., None]:
    """A signal receiver that calls ``receiver`` only for the tasks of ``app``.

    The claim signals are process-wide; a worker imports one app, but a test
    process may hold several.
    """

    def receive(sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "app", None) is app:
            receiver(sender=sender, **kwargs)

    return receive
