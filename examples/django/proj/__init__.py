"""The example Django project; its Celery app loads with Django (celery -A proj)."""

from __future__ import annotations

from proj.celery import app as celery_app

__all__ = ["celery_app"]
