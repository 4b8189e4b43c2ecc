"""Store micro-benchmarks: the claim statements alone, against PostgreSQL.

* ``clients``: acquire and complete latency (p50, p99) and claims per second
  with 1, 2, 4 and 8 concurrent client processes, each on fresh keys;
* ``contention``: the same clients racing for a handful of keys (acquire,
  then release when won);
* ``size``: the claims table at 0, 1M and 10M finished rows (made with one
  ``INSERT ... SELECT generate_series``): first acquires, completions and
  duplicate acquires must not slow down as the table grows;
* ``purge``: 1M expired rows purged in batches while a client acquires;
* ``paths``: one client's wall time and CPU per claim (acquire + complete)
  through the store, and for the hand-written two-statement claim on the
  same kind of psycopg connection, interleaved; with the
  CPU PostgreSQL's processes spent meanwhile, where the server is on this
  machine (read from ``/proc``).

Every table is the benchmark's own and is dropped at the end.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from benchmarks.apps.bench_app import floor_sql, handwritten_sql
from benchmarks.workers import server_cpu_reading, server_cpu_since
from celery_claim import ClaimStore, sql_settle
from celery_claim.sql import make_table

Latencies = dict[str, list[float]]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds."""
    return {"p50_ms": 1000 * percentile(values, 50), "p99_ms": 1000 * percentile(values, 99),
            "n": len(values)}


def _timed_claim(store: ClaimStore, key: str, pause: float = 0.0) -> tuple[float, float]:
    """Acquire the fresh ``key``, (pause,) complete it: the seconds each statement took."""
    # The statement a task's acquire runs (``claim``; ``acquire`` before it existed).
    acquire = getattr(store, "claim", store.acquire)
    t0 = time.perf_counter()
    won = acquire(key, task_name="bench", task_id=key, owner="bench",
                  payload_digest="d", lease_seconds=60)
    t1 = time.perf_counter()
    assert won is not None
    if pause:
        time.sleep(pause)
    t2 = time.perf_counter()
    store.complete(key, won.token, result=None, has_result=True, ttl_seconds=3600)
    return t1 - t0, time.perf_counter() - t2


def _store(url: str, table: str) -> ClaimStore:
    return ClaimStore(url, table=table, create_schema=False)


def _claim_loop(url: str, table: str, seconds: float, prefix: str, stop: Any, start: Any,
                out: Any) -> None:
    """One client: acquire a fresh key, complete it, again, for ``seconds`` (or until
    ``stop`` is set)."""
    store = _store(url, table)
    lat: Latencies = {"acquire": [], "complete": []}
    stamps: list[float] = []
    try:
        store.acquire(f"{prefix}:warm", task_name="bench", task_id="w", owner="bench",
                      payload_digest=None, lease_seconds=60)
        start.wait()
        deadline = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < deadline and not (stop and stop.is_set()):
            acquire, complete = _timed_claim(store, f"{prefix}:{n}")
            n += 1
            lat["acquire"].append(acquire)
            lat["complete"].append(complete)
            stamps.append(time.time())
        out.put((lat, stamps, None))
    except BaseException as exc:
        out.put((lat, stamps, repr(exc)))
    finally:
        store.dispose()


def _contend_loop(url: str, table: str, seconds: float, keys: int, start: Any,
                  out: Any) -> None:
    """One client racing for ``keys`` keys: acquire, and release when won."""
    store = _store(url, table)
    lat: Latencies = {"acquire": [], "won": []}
    try:
        start.wait()
        deadline = time.perf_counter() + seconds
        while (t0 := time.perf_counter()) < deadline:
            key = f"hot:{random.randrange(keys)}"
            won = store.acquire(key, task_name="bench", task_id=key, owner="bench",
                                payload_digest=None, lease_seconds=60)
            lat["acquire"].append(time.perf_counter() - t0)
            if won is not None:
                lat["won"].append(1.0)
                store.release(key, won.token, ttl_seconds=3600)
        out.put((lat, [], None))
    except BaseException as exc:
        out.put((lat, [], repr(exc)))
    finally:
        store.dispose()


def _parallel(target: Callable[..., None], clients: int, args: Callable[[int], tuple[Any, ...]],
              timeout: float) -> list[tuple[Latencies, list[float]]]:
    # spawn: a forked child of a process with threads (a test run) can deadlock
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args(n), start, out)) for n in range(clients)]
    for proc in procs:
        proc.start()
    time.sleep(0.5)
    start.set()
    results = []
    try:
        for _ in procs:
            lat, stamps, error = out.get(timeout=timeout)
            if error is not None:
                raise RuntimeError(f"client failed: {error}")
            results.append((lat, stamps))
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    return results


class StoreBench:
    def __init__(self, url: str, log: Callable[[str], None] = print) -> None:
        self.url = url
        self.log = log
        self.engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")

    def table(self) -> str:
        name = f"bench_store_{uuid.uuid4().hex[:8]}"
        ClaimStore(self.url, table=name).create_schema()
        return name

    def drop(self, table: str) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
            conn.execute(sa.text(sql_settle.drop_settle_function(make_table(table))))

    def clients(self, counts: Sequence[int], seconds: float) -> list[dict[str, Any]]:
        rows = []
        for clients in counts:
            table = self.table()
            try:
                results = _parallel(_claim_loop, clients,
                                    lambda n, t=table: (self.url, t, seconds, f"c{n}", None),
                                    timeout=seconds + 60)
            finally:
                self.drop(table)
            acquire = [x for lat, _ in results for x in lat["acquire"]]
            complete = [x for lat, _ in results for x in lat["complete"]]
            row = {"clients": clients, "claims_per_s": len(acquire) / seconds,
                   "acquire": summary(acquire), "complete": summary(complete)}
            self.log(f"store clients={clients}: {row['claims_per_s']:.0f} claims/s")
            rows.append(row)
        return rows

    def contention(self, clients: int, keys: int, seconds: float) -> dict[str, Any]:
        table = self.table()
        try:
            results = _parallel(_contend_loop, clients,
                                lambda n: (self.url, table, seconds, keys),
                                timeout=seconds + 60)
        finally:
            self.drop(table)
        acquire = [x for lat, _ in results for x in lat["acquire"]]
        won = sum(len(lat["won"]) for lat, _ in results)
        row = {"clients": clients, "keys": keys, "attempts_per_s": len(acquire) / seconds,
               "wins_per_s": won / seconds, "acquire": summary(acquire)}
        self.log(f"store contention: {row['attempts_per_s']:.0f} attempts/s")
        return row

    def fill(self, table: str, first: int, last: int, *, expired: bool = False) -> float:
        """Add finished rows ``first..last`` in one statement; returns seconds taken."""
        expires = "now() - interval '1 day'" if expired else "now() + interval '7 days'"
        started = time.perf_counter()
        with self.engine.connect() as conn:
            conn.execute(sa.text(
                f"INSERT INTO {table} (key, state, token, task_name, task_id, attempt, "  # noqa: S608
                "owner, payload_digest, duplicates, result, result_content_type, "
                "result_content_encoding, created_at, updated_at, finished_at, expires_at) "
                "SELECT 'bench.task:' || md5(i::text), 'succeeded', 1, 'bench.task', "
                "md5(i::text), 1, 'bench', md5(i::text), 0, 'null'::bytea, "
                "'application/json', 'utf-8', now(), now(), "
                f"now(), {expires} "
                "FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS i "
                "ORDER BY 1"),
                {"first": first, "last": last})
            conn.execute(sa.text(f"VACUUM ANALYZE {table}"))
            # Write the bulk load out now, so the measurement that follows sees a
            # table of this size, not the checkpoint that the load triggers.
            try:
                conn.execute(sa.text("CHECKPOINT"))
            except sa.exc.DBAPIError:
                pass  # not a superuser: the measurement may overlap a checkpoint
        return time.perf_counter() - started

    def measure_one_client(self, table: str, ops: int, existing: int) -> dict[str, Any]:
        store = _store(self.url, table)
        lat: Latencies = {"acquire": [], "complete": [], "duplicate": []}
        prefix = uuid.uuid4().hex[:8]
        try:
            for n in range(-50, ops):  # the first 50 warm the connection up
                acquire, complete = _timed_claim(store, f"new:{prefix}:{n}")
                if n >= 0:
                    lat["acquire"].append(acquire)
                    lat["complete"].append(complete)
            for _ in range(ops):
                if existing:
                    i = random.randint(1, existing)
                    key = f"bench.task:{_md5(i)}"
                else:
                    key = f"new:{prefix}:{random.randrange(ops)}"
                t0 = time.perf_counter()
                won = store.acquire(key, task_name="bench.task", task_id="x", owner="bench",
                                    payload_digest=None, lease_seconds=60)
                lat["duplicate"].append(time.perf_counter() - t0)
                assert won is None
        finally:
            store.dispose()
        return {name: summary(values) for name, values in lat.items()}

    def operator_queries(self, table: str) -> dict[str, float]:
        """Milliseconds (median of three) of the stale listing's first page and of
        the counts the metrics collector reads: both read the whole table."""
        store = _store(self.url, table)
        try:
            def timed(run: Callable[[], Any]) -> float:
                took = []
                for _ in range(3):
                    started = time.perf_counter()
                    run()
                    took.append(1000 * (time.perf_counter() - started))
                return statistics.median(took)
            return {"stale_list_ms": timed(lambda: store.list_claims(stale=True, limit=50)),
                    "stats_ms": timed(store.stats)}
        finally:
            store.dispose()

    def sizes(self, sizes: Sequence[int], ops: int) -> list[dict[str, Any]]:
        table = self.table()
        rows = []
        filled = 0
        try:
            for size in sorted(sizes):
                took = self.fill(table, filled + 1, size) if size > filled else 0.0
                filled = max(filled, size)
                with self.engine.connect() as conn:
                    bytes_ = conn.execute(sa.text(
                        f"SELECT pg_total_relation_size('{table}')")).scalar_one()
                row = {"rows": size, "fill_seconds": took, "table_mb": bytes_ / 2**20,
                       **self.measure_one_client(table, ops, filled),
                       **self.operator_queries(table)}
                self.log(f"store size={size}: acquire p99 {row['acquire']['p99_ms']:.2f} ms")
                rows.append(row)
        finally:
            self.drop(table)
        return rows

    def purge(self, rows: int, quiet: float = 2.0) -> dict[str, Any]:
        """Purge ``rows`` expired rows while one client acquires and completes."""
        table = self.table()
        try:
            self.fill(table, 1, rows, expired=True)
            # spawn: a forked child of a process with threads (a test run) can deadlock
            ctx = multiprocessing.get_context("spawn")
            stop, start, out = ctx.Event(), ctx.Event(), ctx.Queue()
            proc = ctx.Process(target=_claim_loop,
                               args=(self.url, table, 3600.0, "purge", stop, start, out))
            proc.start()
            time.sleep(0.5)
            start.set()
            time.sleep(quiet)
            store = _store(self.url, table)
            began = time.time()
            deleted = store.purge(batch_size=1000)
            ended = time.time()
            store.dispose()
            time.sleep(quiet)
            stop.set()
            lat, stamps, error = out.get(timeout=60)
            proc.join(timeout=10)
            if error is not None:
                raise RuntimeError(f"client failed: {error}")
        finally:
            self.drop(table)
        before = [x for x, at in zip(lat["acquire"], stamps, strict=True) if at < began]
        during = [x for x, at in zip(lat["acquire"], stamps, strict=True)
                  if began <= at <= ended]
        row = {"rows": rows, "deleted": deleted, "purge_seconds": ended - began,
               "acquire_before": summary(before), "acquire_during": summary(during)}
        self.log(f"store purge: {deleted} rows in {row['purge_seconds']:.1f}s")
        return row


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def _thread_connection(store: ClaimStore) -> Any:
    # The store's own claim connection of this thread (a psycopg connection).
    threads = getattr(store.connector, "_driver", None)
    assert threads is not None, "the paths benchmark needs PostgreSQL"
    return threads._get()[0]


def paths(url: str, ops: int, rounds: int = 3,
          pauses_ms: Sequence[float] = (0.0, 10.0)) -> list[dict[str, Any]]:
    """Per claim (acquire + complete, one client, fresh keys): wall time beyond
    the pause and client CPU, through the store (the SQLAlchemy connector,
    and Django's connection where Django is installed) and for the
    hand-written claims (the project's old two-column one, and the floor:
    three columns, fenced by a token). A pause between acquire and complete stands in for a
    body: the connection, its backend and the CPU go idle meanwhile."""
    table = f"bench_paths_{uuid.uuid4().hex[:8]}"
    store = ClaimStore(url, table=table)
    store.create_schema()
    django_store = _django_store(url, table)
    cursor_store = ClaimStore(url, table=table, create_schema=False)
    threads = getattr(cursor_store.connector, "_driver", None)
    assert threads is not None
    threads.use_libpq = False  # the same statements on psycopg's cursor
    stores = {"claim": store, "claim_cursor": cursor_store,
              **({"django": django_store} if django_store else {})}
    hand = _thread_connection(store)  # the same kind of autocommit psycopg connection
    hand_create, hand_claim, hand_done = handwritten_sql(f"{table}_hand")
    hand.execute(hand_create)
    floor_create, floor_claim, floor_done = floor_sql(f"{table}_floor")
    hand.execute(floor_create)
    cursor = hand.cursor()

    def through(name: str) -> Callable[[str, float], Any]:
        return lambda key, pause: _timed_claim(stores[name], key, pause)

    def handwritten(key: str, pause: float) -> None:
        cursor.execute(hand_claim, (key,))
        assert cursor.fetchone() is not None
        if pause:
            time.sleep(pause)
        cursor.execute(hand_done, (key,))

    def floor(key: str, pause: float) -> None:
        cursor.execute(floor_claim, (key,))
        row = cursor.fetchone()
        assert row is not None
        if pause:
            time.sleep(pause)
        cursor.execute(floor_done, (key, row[0]))

    others = {"handwritten": handwritten, "floor": floor}

    def ops_at(pause_ms: float) -> int:  # about 3 s of pauses per path and round at most
        return ops if not pause_ms else max(20, min(ops, int(3000 / pause_ms)))

    measured: dict[tuple[float, str], dict[str, list[float]]] = {}
    try:
        for pause_ms in pauses_ms:
            n_ops = ops_at(pause_ms)
            for round_ in range(-1, rounds):  # round -1 warms every path up
                for name in (*stores, *others):
                    run = others[name] if name in others else through(name)
                    n = min(200, n_ops) if round_ < 0 else n_ops
                    server0, cpu0, t0 = server_cpu_reading(), _cpu(), time.perf_counter()
                    for i in range(n):
                        run(f"{name}:{pause_ms}:{round_}:{i}", pause_ms / 1000)
                    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
                    server = server_cpu_since(server0)
                    if round_ >= 0:
                        row = measured.setdefault((pause_ms, name),
                                                  {"wall": [], "cpu": [], "server": []})
                        row["wall"].append(1000 * wall / n - pause_ms)
                        row["cpu"].append(1000 * cpu / n)
                        row["server"].append(1000 * server / n)
    finally:
        cursor.close()
        hand.execute(f"DROP TABLE IF EXISTS {table}_hand")
        hand.execute(f"DROP TABLE IF EXISTS {table}_floor")
        if django_store is not None:
            django_store.connector.connection.close()  # type: ignore[attr-defined]
        cursor_store.dispose()
        store.drop_schema()
        store.dispose()
    return [{"path": name, "pause_ms": pause_ms, "wall_ms": statistics.median(m["wall"]),
             "cpu_ms": statistics.median(m["cpu"]),
             "server_cpu_ms": statistics.median(m["server"]), "rounds": rounds,
             "ops": ops_at(pause_ms)}
            for (pause_ms, name), m in measured.items()]


def calls(url: str, n: int = 2000, rounds: int = 3) -> list[dict[str, Any]]:
    """Client CPU and wall time per store call, one client: the acquire alone,
    the task's acquire (``claim``) on fresh keys, and ``claim`` on a finished
    key (a duplicate). Medians over ``rounds`` after one warm-up round."""
    store = ClaimStore(url, table=f"bench_calls_{uuid.uuid4().hex[:8]}")
    store.create_schema()
    options: dict[str, Any] = {"task_name": "bench", "owner": "bench",
                               "payload_digest": "d" * 64, "lease_seconds": 60}
    measured: dict[str, dict[str, list[float]]] = {}
    try:
        first = store.acquire("done", task_id="done", **options)
        assert first is not None
        store.complete("done", first.token, result=None, has_result=True, ttl_seconds=3600)
        run: dict[str, Callable[[int, int], Any]] = {
            "acquire": lambda r, i: store.acquire(f"a:{r}:{i}", task_id="t", **options),
            "claim": lambda r, i: store.claim(f"c:{r}:{i}", task_id="t", **options),
            "claim, duplicate": lambda r, i: store.claim("done", task_id="other", **options),
        }
        for round_ in range(-1, rounds):
            for name, call in run.items():
                cpu0, t0 = _cpu(), time.perf_counter()
                for i in range(n):
                    call(round_, i)
                if round_ >= 0:
                    row = measured.setdefault(name, {"cpu": [], "wall": []})
                    row["cpu"].append(1000 * (_cpu() - cpu0) / n)
                    row["wall"].append(1000 * (time.perf_counter() - t0) / n)
    finally:
        store.drop_schema()
        store.dispose()
    return [{"call": name, "cpu_ms": statistics.median(m["cpu"]),
             "wall_ms": statistics.median(m["wall"]), "cpu_ms_rounds": m["cpu"], "calls": n}
            for name, m in measured.items()]


def coalesced(url: str, threads: int = 8, claims: int = 400, rounds: int = 3,
              pause_ms: float = 0.0) -> list[dict[str, Any]]:
    """``threads`` threads of one process, each claiming and completing
    ``claims`` fresh keys (a ``pause_ms`` body between): through one store
    with coalesced claims, through one without, and the floor with one
    psycopg connection per thread. Rounds alternate the three; medians."""
    import psycopg

    table = f"bench_coalesce_{uuid.uuid4().hex[:8]}"
    stores = {"coalesced": ClaimStore(url, table=table),
              "alone": ClaimStore(url, table=table, coalesce=False)}
    stores["coalesced"].create_schema()
    floor_create, floor_claim, floor_done = floor_sql(f"{table}_floor")
    plain = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(
        hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(floor_create)
    options: dict[str, Any] = {"task_name": "bench", "owner": "bench",
                               "payload_digest": "d" * 64, "lease_seconds": 60}
    local = threading.local()

    def claim_through(store: ClaimStore) -> Callable[[str], None]:
        def one(key: str) -> None:
            won = store.claim(key, task_id=key, **options)
            assert type(won).__name__ == "Acquired"
            if pause_ms:
                time.sleep(pause_ms / 1000)
            assert store.complete(key, won.token, result=None, has_result=True,
                                  ttl_seconds=3600)
        return one

    opened: list[Any] = []  # closed after each round's reading (their backends' CPU counts)

    def floor(key: str) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = psycopg.connect(plain, autocommit=True)
            opened.append(conn)
        token = conn.execute(floor_claim, (key,)).fetchone()[0]
        if pause_ms:
            time.sleep(pause_ms / 1000)
        conn.execute(floor_done, (key, token))

    paths = {"floor": floor, **{name: claim_through(store) for name, store in stores.items()}}
    measured: dict[str, dict[str, list[float]]] = {}
    try:
        for round_ in range(-1, rounds):
            for name, run_one in paths.items():
                n = min(claims, 50) if round_ < 0 else claims
                batched0 = stores["coalesced"].coalesced.claim.batched_calls \
                    if stores["coalesced"].coalesced else 0
                barrier = threading.Barrier(threads + 1)

                def worker(t: int, run_one: Callable[[str], None] = run_one,
                           name: str = name, n: int = n, barrier: Any = barrier,
                           round_: int = round_) -> None:
                    barrier.wait()
                    for i in range(n):
                        run_one(f"{name}:{round_}:{t}:{i}")
                    local.conn = None

                pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
                for thread in pool:
                    thread.start()
                server0, cpu0 = server_cpu_reading(), _cpu()
                barrier.wait()
                t0 = time.perf_counter()
                for thread in pool:
                    thread.join()
                wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
                server = server_cpu_since(server0)
                for conn in opened:
                    conn.close()
                opened.clear()
                if round_ >= 0:
                    total = threads * n
                    row = measured.setdefault(name, {"rate": [], "cpu": [], "server": [],
                                                     "batched": []})
                    row["rate"].append(total / wall)
                    row["cpu"].append(1000 * cpu / total)
                    row["server"].append(1000 * server / total)
                    coalescer = stores["coalesced"].coalesced
                    row["batched"].append(
                        (coalescer.claim.batched_calls - batched0) / total
                        if name == "coalesced" and coalescer else 0.0)
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}_floor")
        stores["coalesced"].drop_schema()
        for store in stores.values():
            store.dispose()
    return [{"path": name, "threads": threads, "pause_ms": pause_ms,
             "claims_per_s": statistics.median(m["rate"]), "rates": m["rate"],
             "cpu_ms": statistics.median(m["cpu"]), "server_cpu_ms": statistics.median(m["server"]),
             "batched_share": statistics.median(m["batched"])}
            for name, m in measured.items()]


def _django_store(url: str, table: str) -> ClaimStore | None:
    """A store on Django's connection to the same database (``None`` without Django)."""
    try:
        import django
        from django.conf import settings
    except ImportError:
        return None
    parsed = sa.engine.make_url(url)
    database = {"ENGINE": "django.db.backends.postgresql", "NAME": parsed.database,
                "USER": parsed.username or "", "PASSWORD": parsed.password or "",
                "HOST": parsed.host or "", "PORT": str(parsed.port or "")}
    if not settings.configured:
        settings.configure(DATABASES={"default": database}, INSTALLED_APPS=[], USE_TZ=True)
        django.setup()
    from django.db import connections

    from celery_claim.django.connector import DjangoConnector

    alias = "celery_claim_benchmark"  # an alias of its own, whatever the process had
    filled = connections.configure_settings({"default": dict(database), alias: database})
    connections.settings[alias] = filled[alias]
    return ClaimStore(connector=DjangoConnector(alias), table=table, create_schema=False)


def _md5(i: int) -> str:
    import hashlib

    return hashlib.md5(str(i).encode()).hexdigest()


def run(url: str, *, quick: bool = False, sizes: Sequence[int] | None = None,
        purge_rows: int | None = None, seconds: float | None = None, ops: int | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    bench = StoreBench(url, log)
    seconds = seconds if seconds is not None else (0.5 if quick else 3.0)
    sizes = sizes if sizes is not None else ((0, 10_000) if quick else
                                             (0, 1_000_000, 10_000_000))
    purge_rows = purge_rows if purge_rows is not None else (5_000 if quick else 1_000_000)
    ops = ops if ops is not None else (200 if quick else 10_000)
    results: dict[str, Any] = {
        "clients": bench.clients((1, 2) if quick else (1, 2, 4, 8), seconds),
        "contention": bench.contention(4 if quick else 8, 4, seconds),
        "sizes": bench.sizes(sizes, ops),
        "purge": bench.purge(purge_rows),
        "paths": paths(url, 50 if quick else 5000),
    }
    bench.engine.dispose()
    return results


__all__ = ["StoreBench", "paths", "percentile", "run", "summary"]
