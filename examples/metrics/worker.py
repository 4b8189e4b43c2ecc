"""Prometheus metrics for a worker: install them in each process, serve them once."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals
from prometheus_client import start_http_server

from celery_claim import metrics

app = Celery("proj", broker="redis://localhost:6379/0")
app.conf.claim_database_url = "postgresql+psycopg://postgres@localhost:5432/test"
app.conf.worker_pool = "threads"  # one process: one registry to serve


@signals.worker_init.connect
def serve_metrics(**_: Any) -> None:
    metrics.install()
    start_http_server(int(os.environ.get("METRICS_PORT", "9808")))
