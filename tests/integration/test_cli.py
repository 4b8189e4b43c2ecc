"""Every ``celery-claim`` command against real PostgreSQL (and SQLite where it applies)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from celery_claim import ClaimStore, cli
from celery_claim.testing import free_port

BIN = Path(sys.executable).parent


def invoke(store: ClaimStore, *args: str) -> Result:
    url = store.engine.url.render_as_string(hide_password=False)
    return CliRunner().invoke(cli.claim, ["--database-url", url, "--table", store.table_name,
                                          *args], catch_exceptions=False)


def console(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            program: str = "celery-claim") -> subprocess.CompletedProcess[str]:
    """The real console script, as a user runs it."""
    return subprocess.run([str(BIN / program), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=60, check=False)


def acquire(store: ClaimStore, key: str, *, task: str = "billing.charge",
            lease: float = 60.0) -> int:
    won = store.acquire(key, task_name=task, task_id=f"id-{key}", owner="host/1",
                        payload_digest=None, lease_seconds=lease)
    assert won is not None
    return won.token


def succeed(store: ClaimStore, key: str, *, ttl: float = 3600.0, **kw: Any) -> None:
    token = acquire(store, key, **kw)
    assert store.complete(key, token, result={"charged": 1}, has_result=True,
                          ttl_seconds=ttl)


def one_line_error(result: Result | subprocess.CompletedProcess[str]) -> str:
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("celery-claim: error: ")
    return err


# --- schema ---------------------------------------------------------------------

def test_schema_apply_then_drop(any_url: str, table_name: str) -> None:
    runner = CliRunner()
    base = ["--database-url", any_url, "--table", table_name]
    applied = runner.invoke(cli.claim, [*base, "schema", "--apply"])
    assert applied.exit_code == 0, applied.output
    store = ClaimStore(any_url, table=table_name, create_schema=False)
    try:
        assert store.get("nothing") is None  # the table exists
        dropped = runner.invoke(cli.claim, [*base, "schema", "--drop", "--yes"])
        assert dropped.exit_code == 0, dropped.output
        missing = invoke(store, "status", "nothing")
        assert missing.exit_code == 1
        assert "schema --apply" in one_line_error(missing)
    finally:
        store.dispose()


def test_schema_prints_the_ddl_of_the_configured_database(pg_store: ClaimStore) -> None:
    result = invoke(pg_store, "schema")
    assert result.exit_code == 0
    assert f"CREATE TABLE {pg_store.table_name}" in result.stdout
    assert "TIMESTAMP WITH TIME ZONE" in result.stdout
    assert "result BYTEA" in result.stdout


# --- status ------------------------------------------------------------------------

def test_status_shows_the_row_readably_and_as_json(store: ClaimStore) -> None:
    succeed(store, "charge:1")
    store.note_duplicate("charge:1")

    text = invoke(store, "status", "charge:1")
    assert text.exit_code == 0, text.output
    assert "state                  succeeded" in text.stdout
    assert "duplicates suppressed  1" in text.stdout
    assert '{"charged": 1}' in text.stdout

    data = json.loads(invoke(store, "status", "charge:1", "--json").stdout)
    assert data["key"] == "charge:1"
    assert data["state"] == "succeeded"
    assert data["result"] == {"charged": 1}
    assert data["duplicates"] == 1
    assert data["is_live"] is False


def test_status_of_a_live_and_a_stale_claim(pg_store: ClaimStore) -> None:
    acquire(pg_store, "live")
    acquire(pg_store, "stale", lease=-1.0)
    assert "live: lease" in invoke(pg_store, "status", "live").stdout
    assert "STALE" in invoke(pg_store, "status", "stale").stdout
    assert json.loads(invoke(pg_store, "status", "stale", "--json").stdout)["is_stale"]


def test_status_of_an_unknown_key_is_a_one_line_error(store: ClaimStore) -> None:
    result = invoke(store, "status", "charge:missing")
    assert result.exit_code == cli.EXIT_NOT_FOUND
    assert "no claim with key 'charge:missing'" in one_line_error(result)
    assert result.stdout == ""


# --- list ------------------------------------------------------------------------------

def test_list_filters_by_state_task_and_stale(store: ClaimStore) -> None:
    succeed(store, "a:1", task="app.a")
    acquire(store, "a:2", task="app.a")
    acquire(store, "b:1", task="app.b", lease=-1.0)

    def keys(*args: str) -> list[str]:
        result = invoke(store, "list", "--json", *args)
        assert result.exit_code == 0, result.output
        return [c["key"] for c in json.loads(result.stdout)["claims"]]

    assert keys() == ["a:1", "a:2", "b:1"]
    assert keys("--state", "running") == ["a:2", "b:1"]
    assert keys("--task", "app.a") == ["a:1", "a:2"]
    assert keys("--stale") == ["b:1"]
    assert keys("--state", "failed") == []

    text = invoke(store, "list", "--stale")
    assert "b:1" in text.stdout
    assert "stale" in text.stdout
    assert "a:2" not in text.stdout


def test_list_pages_with_after(pg_store: ClaimStore) -> None:
    for n in range(5):
        acquire(pg_store, f"k{n}")
    first = json.loads(invoke(pg_store, "list", "--limit", "2", "--json").stdout)
    assert [c["key"] for c in first["claims"]] == ["k0", "k1"]
    assert first["next_after"] == "k1"
    seen = ["k0", "k1"]
    after = first["next_after"]
    while after:
        page = json.loads(invoke(pg_store, "list", "--limit", "2", "--after", after,
                                 "--json").stdout)
        seen += [c["key"] for c in page["claims"]]
        after = page["next_after"]
    assert seen == [f"k{n}" for n in range(5)]
    text = invoke(pg_store, "list", "--limit", "2")
    assert "more: add --after 'k1'" in text.stdout


def test_list_rejects_an_unknown_state(pg_store: ClaimStore) -> None:
    result = invoke(pg_store, "list", "--state", "runing")
    assert result.exit_code == 2
    assert "runing" in result.stderr


# --- release -------------------------------------------------------------------------

def test_release_refuses_a_live_lease_unless_forced(store: ClaimStore) -> None:
    token = acquire(store, "charge:7")
    refused = invoke(store, "release", "charge:7")
    assert refused.exit_code == cli.EXIT_REFUSED
    assert "live lease" in one_line_error(refused)
    record = store.get("charge:7")
    assert record is not None
    assert record.state == "running"

    forced = invoke(store, "release", "charge:7", "--force", "--json")
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout) == {"key": "charge:7", "token": token, "released": True,
                                         "previous_state": "running"}
    record = store.get("charge:7")
    assert record is not None
    assert record.state == "released"
    assert record.error == "released by operator"
    # The next delivery acquires it, with the next token.
    assert acquire(store, "charge:7") == token + 1


def test_release_of_a_stale_claim_needs_no_force(pg_store: ClaimStore) -> None:
    acquire(pg_store, "charge:8", lease=-1.0)
    result = invoke(pg_store, "release", "charge:8", "--reason", "worker gone")
    assert result.exit_code == 0, result.output
    assert "released charge:8 (token 1, was running)" in result.stdout
    record = pg_store.get("charge:8")
    assert record is not None
    assert (record.state, record.error) == ("released", "worker gone")


def test_release_is_fenced_by_token(pg_store: ClaimStore) -> None:
    acquire(pg_store, "charge:9", lease=-1.0)
    acquire(pg_store, "charge:9")  # taken over: token 2
    result = invoke(pg_store, "release", "charge:9", "--token", "1", "--force")
    assert result.exit_code == cli.EXIT_REFUSED
    assert "has token 2, not 1" in one_line_error(result)
    record = pg_store.get("charge:9")
    assert record is not None
    assert (record.state, record.token) == ("running", 2)


def test_release_of_an_unknown_key(pg_store: ClaimStore) -> None:
    result = invoke(pg_store, "release", "nope", "--force")
    assert result.exit_code == cli.EXIT_NOT_FOUND
    one_line_error(result)


def test_release_of_a_succeeded_claim_says_it_will_run_again(pg_store: ClaimStore) -> None:
    succeed(pg_store, "charge:10")
    result = invoke(pg_store, "release", "charge:10")
    assert result.exit_code == 0
    assert "runs the body again" in result.stdout


# --- purge ------------------------------------------------------------------------------

def test_purge_deletes_expired_finished_claims_in_batches(store: ClaimStore) -> None:
    for n in range(5):
        succeed(store, f"old:{n}", ttl=0.0)
    succeed(store, "fresh", ttl=3600.0)
    acquire(store, "running", lease=-1.0)  # stale, but running claims are never purged
    time.sleep(0.01)
    result = invoke(store, "purge", "--batch-size", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["deleted"] == 5
    assert json.loads(result.stdout)["batches"] == 3
    assert [r.key for r in store.list_claims()] == ["fresh", "running"]
    again = invoke(store, "purge")
    assert "deleted 0 expired claim(s)" in again.stdout


def test_purge_stops_after_max_batches(pg_store: ClaimStore) -> None:
    for n in range(4):
        succeed(pg_store, f"old:{n}", ttl=0.0)
    result = invoke(pg_store, "purge", "--batch-size", "1", "--max-batches", "3", "--json")
    assert json.loads(result.stdout)["deleted"] == 3
    assert len(pg_store.list_claims()) == 1


# --- stats -------------------------------------------------------------------------------

def test_stats_counts_by_task_and_state(store: ClaimStore) -> None:
    succeed(store, "a:1", task="app.a")
    store.note_duplicate("a:1")
    store.note_duplicate("a:1")
    acquire(store, "a:2", task="app.a", lease=-1.0)
    succeed(store, "b:1", task="app.b")
    data = json.loads(invoke(store, "stats", "--json").stdout)
    rows = {(r["task_name"], r["state"]): r for r in data["rows"]}
    assert rows[("app.a", "succeeded")]["duplicates"] == 2
    assert rows[("app.a", "running")]["stale"] == 1
    assert data["totals"] == {"claims": 3, "acquisitions": 3, "duplicates": 2, "stale": 1}
    text = invoke(store, "stats")
    assert "duplicates suppressed" in text.stdout
    assert "1 stale claim(s)" in text.stdout


# --- bad input ------------------------------------------------------------------------------

def test_malformed_url_is_a_one_line_error() -> None:
    result = console("--database-url", "postgres//nohost", "status", "k")
    assert result.returncode == 1
    assert "claim_database_url must be an SQLAlchemy URL" in one_line_error(result)
    bad_scheme = console("--database-url", "postgresql+psycopg2://x@127.0.0.1/db", "list")
    assert bad_scheme.returncode == 1
    assert "psycopg 3" in one_line_error(bad_scheme)


def test_unreachable_database_is_a_one_line_error() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    for args in (["status", "k"], ["list"], ["stats"], ["purge"], ["release", "k"],
                 ["schema", "--apply"]):
        result = console("--database-url", url, *args)
        assert result.returncode == 1, (args, result.stderr)
        assert "CELERY_CLAIM_DATABASE_URL" in one_line_error(result)


def test_no_database_configured_is_a_one_line_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_CLAIM_")}
    result = subprocess.run([str(BIN / "celery-claim"), "stats"], capture_output=True,
                            text=True, env=env, timeout=60, check=False)
    assert result.returncode == 1
    assert "no claim store configured" in one_line_error(result)


def test_a_bad_table_name_is_a_one_line_error(database_url: str) -> None:
    result = console("--database-url", database_url, "--table", "drop table x;", "stats")
    assert result.returncode == 1
    assert "claim_table must be a plain identifier" in one_line_error(result)


def test_environment_variables_locate_the_store(pg_store: ClaimStore) -> None:
    succeed(pg_store, "env:1")
    url = pg_store.engine.url.render_as_string(hide_password=False)
    result = console("status", "env:1", "--json",
                     env={"CELERY_CLAIM_DATABASE_URL": url,
                          "CELERY_CLAIM_TABLE": pg_store.table_name})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "succeeded"


# --- celery -A proj claim ---------------------------------------------------------------

def test_celery_command_reads_the_apps_configuration(pg_store: ClaimStore,
                                                     tmp_path: Path) -> None:
    succeed(pg_store, "charge:42")
    url = pg_store.engine.url.render_as_string(hide_password=False)
    (tmp_path / "proj.py").write_text(textwrap.dedent(f"""
        from celery import Celery

        app = Celery("proj", broker="memory://")
        app.conf.claim_database_url = {url!r}
        app.conf.claim_table = {pg_store.table_name!r}
    """))
    env = {"PYTHONPATH": str(tmp_path), "CELERY_CLAIM_DATABASE_URL": ""}
    result = console("-A", "proj", "claim", "status", "charge:42", "--json", env=env,
                     cwd=tmp_path, program="celery")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["key"] == "charge:42"
    missing = console("-A", "proj", "claim", "status", "nope", env=env, cwd=tmp_path,
                      program="celery")
    assert missing.returncode == cli.EXIT_NOT_FOUND
    one_line_error(missing)
    listed = console("-A", "proj", "claim", "--help", env=env, cwd=tmp_path, program="celery")
    for name in ("schema", "status", "list", "release", "purge", "stats", "demo"):
        assert name in listed.stdout
