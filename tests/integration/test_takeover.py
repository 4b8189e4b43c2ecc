"""A holder killed mid-body (SIGKILL: no hook runs) is taken over after its lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from celery_claim import ClaimInProgress

HERE = Path(__file__).parent


def test_killed_holder_is_taken_over_with_the_next_token(
        database_url: str, table_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "HOLDER_DATABASE_URL": database_url, "HOLDER_TABLE": table_name,
           "HOLDER_LEASE": "2", "HOLDER_HANG": "1", "PYTHONPATH": str(HERE)}
    proc = subprocess.Popen([sys.executable, str(HERE / "holder_app.py"), "42"], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("READY 1"), line
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for name in ("HOLDER_DATABASE_URL", "HOLDER_TABLE", "HOLDER_LEASE"):
            monkeypatch.setenv(name, env[name])
        monkeypatch.syspath_prepend(str(HERE))
        import holder_app

        hold = holder_app.hold
        with pytest.raises(ClaimInProgress):  # the dead holder's lease is still live
            hold.apply((42,)).get()
        time.sleep(2.2)
        assert hold.apply((42,)).get() == 2  # taken over with token + 1
        assert hold.apply((42,)).get() == 2  # and now a plain duplicate
        engine = sa.create_engine(database_url)
        with engine.connect() as conn:
            tokens = conn.execute(sa.select(holder_app.effects.c.token)).scalars().all()
        engine.dispose()
        # The killed holder's atomic() write was never committed.
        assert tokens == [2]
        record = hold.claim_store.get("order:42")
        assert record is not None
        assert (record.state, record.token, record.attempt) == ("succeeded", 2, 2)
    finally:
        if proc.poll() is None:
            proc.kill()
        engine = sa.create_engine(database_url)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table_name}_fx"'))
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table_name}"'))
        engine.dispose()
