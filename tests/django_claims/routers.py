"""A project's own router: the shop's tables stay out of the "claims" database."""

from __future__ import annotations

from typing import Any


class ClaimsApart:
    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return False if db == "claims" else None
