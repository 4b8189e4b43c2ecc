"""Every celery-claim setting with its default (load with app.config_from_object)."""

from __future__ import annotations

broker_url = "redis://localhost:6379/0"

# Where claims live: a URL (or claim_engine, an existing SQLAlchemy Engine).
claim_database_url = "postgresql+psycopg://postgres@localhost:5432/test"
# In a Django project, a DATABASES alias instead: the claim on Django's connection.
claim_django_database = None  # e.g. "default" (then no claim_database_url)
claim_table = "celery_claims"  # "schema.table" works too

# Per task these are @app.task(...) options with the same names.
claim_key = "{task_name}:{task_id}"  # or "charge:{order_id}", or a callable
claim_lease_seconds = 60.0  # a heartbeat renews it every lease / 3
claim_heartbeat = True
claim_on_running = "defer"  # "defer" | "skip" | "raise"
claim_on_failure = "retry"  # "retry" | "keep"
claim_store_result = True
claim_check_payload = True
claim_ttl_seconds = 7 * 24 * 3600.0  # finished claims are kept this long
claim_create_schema = True  # create the table at worker start if missing
claim_coalesce = True  # threads and gevent: concurrent claims share one statement
claim_enabled = True
