"""PgBouncer in transaction mode between the workers and PostgreSQL.

Each test starts its own ``pgbouncer`` (Debian's 1.18: no prepared
statements in transaction mode) on a free port, with an ini and a user list
of its own in a temporary directory, and the workers use the engine the docs
give for PgBouncer (``examples/operations/pgbouncer.py``:
``prepare_threshold=None``). Each scenario runs as its naive control too.
Under ``CI=true`` a missing ``pgbouncer`` binary is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from support.scenario import Scenario, both_guards, unavailable

from celery_claim.testing import TcpProxy, free_port, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.pgbouncer]

LEASE = "2"


class PgBouncer:
    """A ``pgbouncer`` process in transaction mode, in front of ``target_url``'s server."""

    def __init__(self, target_url: str) -> None:
        self.target = urllib.parse.urlsplit(target_url)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, url: str) -> str:
        """``url`` through this PgBouncer."""
        parts = urllib.parse.urlsplit(url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo}{at}127.0.0.1:{self.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    def start(self, exe: str) -> PgBouncer:
        (self.dir / "userlist.txt").write_text(f'"{self.target.username or "postgres"}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(f"""\
[databases]
* = host={self.target.hostname} port={self.target.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.dir}/userlist.txt
pool_mode = transaction
max_client_conn = 500
default_pool_size = 40
ignore_startup_parameters = extra_float_digits,options
logfile = {self.dir}/pgbouncer.log
""")
        command = [exe, str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:  # pgbouncer will not run as root
            shutil.chown(self.dir, "postgres")
            for path in self.dir.iterdir():
                shutil.chown(path, "postgres")
            command += ["-u", "postgres"]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        probe = sa.create_engine(self.url(urllib.parse.urlunsplit(self.target)),
                                 connect_args={"prepare_threshold": None})

        def answers() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, f"pgbouncer exited\n{self.log()}"
            try:
                with probe.connect() as conn:
                    return conn.execute(sa.text("SELECT 1")).scalar() == 1
            except sa.exc.OperationalError:
                return False

        try:
            wait_for(answers, 20, interval=0.1, message=lambda: f"pgbouncer silent\n{self.log()}")
        finally:
            probe.dispose()
        return self

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pgbouncer(database_url: str) -> Iterator[PgBouncer]:
    exe = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None)
    if exe is None:
        unavailable("pgbouncer", FileNotFoundError(
            "no pgbouncer binary (apt-get install pgbouncer)"))
    bouncer = PgBouncer(database_url)
    try:
        yield bouncer.start(str(exe))
    finally:
        bouncer.close()


def through(scenario: Scenario, url: str) -> dict[str, str]:
    """The workers' claim database through ``url``, with the docs' PgBouncer engine."""
    return {"CLAIM_TEST_LEASE": LEASE, "CLAIM_TEST_PGBOUNCER": "1",
            "CLAIM_TEST_DATABASE_URL": url}


def start_workers(scenario: Scenario, env: dict[str, str]) -> None:
    scenario.prepare(**env)
    scenario.worker("prefork", 2, **env)
    scenario.worker("threads", 3, **env)
    scenario.ready()


@both_guards
def test_the_same_message_many_times_through_pgbouncer_runs_once(
        scenario: Scenario, pgbouncer: PgBouncer) -> None:
    start_workers(scenario, through(scenario, pgbouncer.url(scenario.database_url)))
    job, records = scenario.job("process"), scenario.sized(60, 8)

    scenario.publish(job, [(n,) for n in records], copies=4)
    scenario.drain()

    scenario.assert_outcome(job, records)
    if scenario.claimed:
        assert scenario.observed(job, "SUCCESS") == 4 * len(records)


@both_guards
def test_producer_duplicates_through_pgbouncer_run_once_by_business_key(
        scenario: Scenario, pgbouncer: PgBouncer) -> None:
    start_workers(scenario, through(scenario, pgbouncer.url(scenario.database_url)))
    job, orders = scenario.job("charge"), scenario.sized(60, 8)

    scenario.publish(job, [(n, 100 + n) for n in orders], copies=3, same_id=False)
    scenario.drain()

    scenario.assert_outcome(job, orders)


@both_guards
def test_a_killed_pool_process_is_taken_over_through_pgbouncer(
        scenario: Scenario, pgbouncer: PgBouncer) -> None:
    env = through(scenario, pgbouncer.url(scenario.database_url))
    scenario.prepare(**env)
    child_queue = scenario.queue("child")
    prefork = scenario.worker("prefork", 2, queues=[child_queue], **env)
    scenario.worker("threads", 3, **env)
    scenario.ready()
    job, load, record = scenario.job("process"), scenario.sized(30, 4), 1000

    scenario.publish(job, [{"record_id": record, "hold": True}], queue=child_queue)
    scenario.publish(job, [{"record_id": n, "sleep": 0.05} for n in load], copies=2)
    holder = wait_for(lambda: scenario.held(job).get(record), timeout=60,
                      message=lambda: f"no holder\n{scenario.logs()}")
    prefork.kill(holder)
    scenario.drain()

    scenario.assert_outcome(job, [*load, record])
    effects = scenario.effect_rows(job, record)
    if scenario.claimed:
        assert holder not in {row.pid for row in effects}, "the killed holder's write is there"
        assert [row.token for row in effects] == [2]
    else:
        assert holder in {row.pid for row in effects}


@both_guards
def test_connections_to_pgbouncer_cut_mid_run_nothing_runs_unclaimed(
        scenario: Scenario, pgbouncer: PgBouncer) -> None:
    # The workers reach PgBouncer through a proxy, which resets their
    # connections and then refuses new ones for a while.
    proxy = TcpProxy("127.0.0.1", pgbouncer.port).start()
    try:
        start_workers(scenario, through(scenario, proxy.url(scenario.database_url)))
        job, records = scenario.job("process"), scenario.sized(60, 16)
        scenario.publish(job, [(n, 0.25) for n in records], copies=2)
        wait_for(lambda: len(scenario.effects_per_record(job)) >= 6, timeout=60,
                 message=lambda: f"no progress\n{scenario.logs()}")

        proxy.cut()
        time.sleep(0.5)  # bodies that had their claim before the cut may still start
        starts = sum(scenario.body_starts(job).values())
        time.sleep(3)
        if scenario.claimed:
            assert sum(scenario.body_starts(job).values()) == starts, \
                "a body started while the claim store was unreachable"
        proxy.restore()
        scenario.drain()

        if scenario.claimed:
            assert scenario.observed(job, "RETRY") > 0
        scenario.assert_outcome(job, records)
    finally:
        scenario.stop_workers()
        proxy.close()
