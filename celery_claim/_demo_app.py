"""The demo's worker module: the proof app (:mod:`celery_claim.proof.app`) on a demo config.

The demo's config adds the embedded default's broker: kombu's filesystem
transport in the run's temporary directory, through
:mod:`celery_claim._demo_transport`. Workers import this module with
``celery -A celery_claim._demo_app worker``; the ``CLAIM_DEMO_*``
environment variables that :mod:`celery_claim.demo` sets configure it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar

from celery_claim.proof.app import make_app
from celery_claim.proof.config import RunConfig

__all__ = ["DemoConfig"]


@dataclasses.dataclass(frozen=True)
class DemoConfig(RunConfig):
    """A demo run; ``broker_dir`` holds the embedded filesystem broker's folders."""

    kind: ClassVar[str] = "demo"

    broker_dir: str = ""

    def transport_options(self) -> dict[str, Any]:
        if self.broker_url.startswith("filesystem"):
            folder = Path(self.broker_dir)
            return {"data_folder_in": str(folder / "queue"),
                    "data_folder_out": str(folder / "queue"),
                    # Kept beside the queue: moving a message there is an atomic rename.
                    "store_processed": True, "processed_folder": str(folder / "processed"),
                    "control_folder": str(folder / "control"), "polling_interval": 0.02}
        return super().transport_options()

    def celery_settings(self) -> dict[str, Any]:
        settings = super().celery_settings()
        if self.broker_url.startswith("filesystem"):
            settings["broker_transport"] = "celery_claim._demo_transport:Transport"
        return settings


if os.environ.get("CLAIM_DEMO_NAME"):
    app = make_app(DemoConfig.from_env())
