"""Every example under examples/ runs and does what its docs page says (SQLite, eager)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import urllib.request

import pytest
import sqlalchemy as sa
from celery import Celery
from examples_loader import EXAMPLES, ROOT, load

from celery_claim import ClaimPayloadMismatch, ClaimStore, metrics, settings
from celery_claim.testing import free_port


def count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_quickstart_charges_once(sqlite_url: str) -> None:
    mod = load("quickstart/tasks.py", sqlite_url)
    engine = mod.charge.claim_store.engine
    mod.metadata.create_all(engine)
    assert mod.charge.apply((7, 1250)).get() == {"charged": 1250}
    assert mod.charge.apply((7, 1250)).get() == {"charged": 1250}
    assert count(engine, mod.charges) == 1


def test_keys(sqlite_url: str) -> None:
    mod = load("keys/tasks.py", sqlite_url)
    assert mod.charge.claim_key_for(7, 100) == "charge:7"
    assert mod.charge.claim_key_for(order_id=7, amount_cents=100) == "charge:7"
    assert mod.sync_customer.claim_key_for("crm", 42) == "sync:crm:42"
    key = mod.build_report.apply((1, {"b": "2", "a": "1"})).get()
    assert key == mod.report_key(1, {"a": "1", "b": "2"})
    assert key.startswith("report:1:")
    mod.charge.apply((7, 100))
    with pytest.raises(ClaimPayloadMismatch):
        mod.charge.apply((7, 999), throw=True)
    assert mod.notify.apply((1, "hello")).get() == "hello"
    assert mod.notify.apply((1, "changed")).get() == "hello"  # no check: the stored result


def test_retries_release_and_reacquire(sqlite_url: str) -> None:
    mod = load("retries/tasks.py", sqlite_url)
    assert mod.charge.apply((1,), {"fail_times": 2}).get() == "charged"
    # Each attempt acquired the claim again, with the next fencing token.
    assert mod.attempts == [(0, 1), (1, 2), (2, 3)]
    assert mod.refund.apply((1,), {"fail_times": 1}).get() == "refunded"
    record = mod.refund.claim_store.get("refund:1")
    assert (record.state, record.token) == ("succeeded", 2)


def test_atomic_writes_commit_with_the_claim(sqlite_url: str) -> None:
    mod = load("atomic/tasks.py", sqlite_url)
    engine = mod.transfer.claim_store.engine
    mod.metadata.create_all(engine)
    mod.Base.metadata.create_all(engine)
    mod.transfer.apply((1, "alice", "bob", 500)).get()
    mod.transfer.apply((1, "alice", "bob", 500)).get()
    assert count(engine, mod.ledger) == 2
    assert mod.transfer.apply((2, "alice", "bob", 0)).failed()
    assert count(engine, mod.ledger) == 2  # the failed body's rows were rolled back
    mod.deposit.apply((1, "alice", 100)).get()
    mod.deposit.apply((1, "alice", 100)).get()
    assert count(engine, mod.Entry.__table__) == 1


def test_external_idempotency_key(sqlite_url: str) -> None:
    mod = load("external/tasks.py", sqlite_url)
    assert mod.send_welcome.apply((1, "a@example.com")).get() == "welcome:1"
    assert mod.send_welcome.apply((1, "a@example.com")).get() == "welcome:1"
    assert mod.email.sent == {"welcome:1": "a@example.com"}


def test_config_lists_every_setting_with_its_default() -> None:
    mod = load("config/celeryconfig.py")
    listed = {name for name in vars(mod) if name.startswith("claim_")}
    assert listed == set(settings.OPTIONS) - {"claim_engine"}
    app = Celery("config", set_as_current=False)
    app.config_from_object(mod)
    resolved = settings.from_sources({}, app.conf, environ={})
    defaults = settings.ClaimSettings()
    for field in dataclasses.fields(defaults):
        if field.name not in ("database_url", "engine"):
            assert getattr(resolved, field.name) == getattr(defaults, field.name), field.name


@pytest.mark.filterwarnings("ignore:Environment variable DJANGO_SETTINGS_MODULE")
def test_django_settings_use_the_celery_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://db.internal/shop")
    mod = load("django/proj/settings_celery.py")
    app = Celery("proj", set_as_current=False)
    app.config_from_object(mod, namespace="CELERY")
    found = settings.app_config(app.conf)
    assert found["claim_database_url"] == "postgresql+psycopg://db.internal/shop"
    assert found["claim_lease_seconds"] == 120
    assert app.conf.task_cls == "celery_claim:ClaimTask"
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "proj.settings")  # restored afterwards
    assert load("django/proj/celery.py").app.main == "proj"


def test_retention_schedule_purges(sqlite_url: str) -> None:
    mod = load("retention/beat.py", sqlite_url)
    app = mod.app
    app.loader.import_default_modules()
    entry = app.conf.beat_schedule["purge-finished-claims"]
    task = app.tasks[entry["task"]]
    store = ClaimStore(sqlite_url)
    store.create_schema()
    for key, ttl in (("old", 0.0), ("new", 3600.0)):
        won = store.acquire(key, task_name="t", task_id=key, owner="o", payload_digest=None,
                            lease_seconds=60)
        assert won is not None
        store.complete(key, won.token, ttl_seconds=ttl)
    time.sleep(0.01)
    assert task.apply(kwargs=entry["kwargs"]).get()["deleted"] == 1
    assert [r.key for r in store.list_claims()] == ["new"]
    store.dispose()


def test_metrics_worker_serves_claim_metrics(sqlite_url: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("METRICS_PORT", str(port))
    mod = load("metrics/worker.py", sqlite_url)
    try:
        mod.serve_metrics()
        app = mod.app

        @app.task(base=__import__("celery_claim").ClaimTask, bind=True, shared=False,
                  name="proj.job")
        def job(self: object) -> int:
            return 1

        job.apply()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            text = page.read().decode()
        assert 'celery_claim_acquisitions_total{task="proj.job"} 1.0' in text
        assert "celery_claim_acquire_seconds_bucket" in text
    finally:
        metrics.uninstall()


def test_the_testing_example_passes() -> None:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-n", "0", str(EXAMPLES / "testing")], capture_output=True, text=True,
                            cwd=ROOT, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout


def test_alembic_metadata_holds_the_claims_table(sqlite_url: str) -> None:
    mod = load("operations/alembic_metadata.py")
    assert set(mod.target_metadata.tables) == {"orders", "celery_claims"}
    engine = sa.create_engine(sqlite_url)
    mod.target_metadata.create_all(engine)
    store = ClaimStore(engine=engine, create_schema=False)
    assert store.get("anything") is None  # the table the store expects exists
    engine.dispose()
