"""The claim's Python, per task, without the database's share: Celery's tracer
runs each task as a worker's pool process does, with the two round trips to
PostgreSQL replaced by the replies PostgreSQL gave to the same statements.

    python -m benchmarks.lifecycle                      # CPU per task (min of repeats)
    python -m benchmarks.lifecycle --instructions       # instructions per task (valgrind)
    python -m benchmarks.lifecycle --tree ../before     # another checkout's celery_claim
    python -m benchmarks.lifecycle --without encode,heartbeat   # one cost taken away

What is left is what the package itself costs a worker per task: the key,
the statements' parameters and rows, the result's encoding, the heartbeat,
signals and logs, the life cycle's own logic. The round trips themselves
(sending, waiting, reading: the same two for the floor) are not in it.

``--instructions`` runs the loop under ``valgrind --tool=callgrind`` twice,
with two numbers of tasks, and divides the difference: instructions per
task, the same from run to run on one machine, whatever else it is doing
(CPU time moves with the machine's load). ``--without`` replaces named parts
with nothing, to measure what each costs (it breaks the semantics, so only
here): ``report`` (signals, the metrics and log lines), ``pin`` (callback ids),
``encode`` (the result's encoding), ``store`` (both statements, whole),
``heartbeat`` (holding and dropping the lease).

``--metrics`` installs the Prometheus metrics (``celery_claim.metrics``,
on a registry of their own) in the process, as a worker that exports them
does, for every variant.

``--live`` keeps the round trips real, and adds the floor: a plain task
whose body runs the floor's two statements (psycopg, autocommit, as the
worker benchmark's ``floor`` task). With ``--instructions`` that counts the
worker's whole share of a claim, against the floor's, on the same terms:
valgrind counts only the Python process's instructions, never PostgreSQL's,
and a wait for a reply is one system call, not counted.

Needs PostgreSQL (``--database-url``): once, to record the replies; with
``--live``, for every task.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

DEFAULT_URL = os.environ.get("CELERY_CLAIM_TEST_DATABASE_URL",
                             "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: Each variant: (task name, what it is).
VARIANTS = {
    "plain": "plain task, acks_late (Celery's tracer alone)",
    "claim": "ClaimTask, default key",
    "claim_key": "ClaimTask, business key 'order:{n}'",
}
#: With ``--live``: the same, and the floor.
LIVE_VARIANTS = {
    "plain": VARIANTS["plain"],
    "floor": "plain task, acks_late, whose body runs the floor's two statements",
    "claim": VARIANTS["claim"],
    "claim_key": VARIANTS["claim_key"],
    "floor_dup": "the floor's task, delivered again after it finished",
    "claim_dup": "ClaimTask, default key, delivered again after it finished",
}
#: A duplicate variant: the variant whose finished tasks it delivers again.
DUPLICATE_OF = {"floor_dup": "floor", "claim_dup": "claim"}
#: How many finished tasks a duplicate variant delivers again, in turn.
DUPLICATED = 50
PARTS = ("report", "pin", "encode", "store", "heartbeat")


def _tracers(database_url: str, without: set[str], live: bool = False, metrics: bool = False,
             ) -> tuple[dict[str, Callable[[str, int], Any]], Callable[[], None]]:
    """A tracer per variant, with the round trips replaced, or real (``live``,
    and the floor's task too), and what to call when done (imports the
    package)."""
    import psycopg
    import sqlalchemy as sa
    from celery import Celery
    from celery.app.trace import build_tracer

    from benchmarks.apps.bench_app import floor_sql
    from celery_claim import ClaimTask, callbacks, reporting, results
    from celery_claim.connectors import _libpq
    from celery_claim.lease import heartbeat

    app = Celery("lifecycle", broker="memory://", set_as_current=False)
    app.conf.update(task_ignore_result=True, claim_database_url=database_url,
                    claim_table=f"bench_lifecycle_{uuid.uuid4().hex[:8]}")

    @app.task(shared=False, name="plain", acks_late=True)
    def plain(n: int) -> int:
        return n

    @app.task(shared=False, name="claim", base=ClaimTask)
    def claim(n: int) -> int:
        return n

    @app.task(shared=False, name="claim_key", base=ClaimTask, claim_key="order:{n}")
    def claim_key(n: int) -> int:
        return n

    variants = LIVE_VARIANTS if live else VARIANTS
    floor_table = f"bench_lifecycle_floor_{uuid.uuid4().hex[:8]}"
    create_floor, floor_claim, floor_done = floor_sql(floor_table)
    conn: Any = None  # the floor's connection (live)
    store: Any = None

    def request(task_id: str, name: str, n: int) -> dict[str, Any]:
        return {"id": task_id, "task": name, "hostname": "bench@host", "args": (n,),
                "kwargs": {}, "retries": 0, "headers": {}, "is_eager": False,
                "delivery_info": {"exchange": "", "routing_key": "q", "priority": 0,
                                  "redelivered": False}}

    # Every replacement below is undone by close(), and every table dropped:
    # the benchmark runs in a test's process too, beside other tests.
    undo: list[Callable[[], None]] = []

    def patch(owner: Any, name: str, value: Any) -> None:
        had, old = name in vars(owner), vars(owner).get(name)
        setattr(owner, name, value)
        undo.append(lambda: setattr(owner, name, old) if had else delattr(owner, name))

    def close() -> None:
        try:
            while undo:
                undo.pop()()
        finally:
            try:
                if live and store is not None:
                    store.drop_schema()
            finally:
                if store is not None:
                    store.dispose()
                if conn is not None:
                    try:
                        conn.execute(f"DROP TABLE IF EXISTS {floor_table}")
                    finally:
                        conn.close()

    try:
        if metrics:
            from prometheus_client import CollectorRegistry

            from celery_claim.metrics import ClaimMetrics

            installed = ClaimMetrics.create(CollectorRegistry())
            installed.connect()
            undo.append(installed.disconnect)
        if live:
            conn = psycopg.connect(sa.engine.make_url(database_url).set(drivername="postgresql")
                                   .render_as_string(hide_password=False), autocommit=True)
            conn.execute(create_floor)

            @app.task(shared=False, name="floor", acks_late=True, bind=True)
            def floor(self: Any, n: int) -> int | None:
                key = f"{self.name}:{self.request.id}"
                won = conn.execute(floor_claim, (key,)).fetchone()
                if won is None:
                    return None  # a duplicate of a finished claim
                conn.execute(floor_done, (key, won[0]))
                return n

        app.finalize()
        store = app.tasks["claim"].claim_store
        store.one_task_at_a_time()  # as a prefork or solo worker does
        tracers = {name: build_tracer(DUPLICATE_OF.get(name, name),
                                      app.tasks[DUPLICATE_OF.get(name, name)],
                                      hostname="bench@host", app=app)
                   for name in variants}

        if not live:
            # Record PostgreSQL's reply to each statement once, then answer with it.
            replies: dict[bytes, Any] = {}
            run = _libpq.LibpqSession._run

            def recording(self: Any, plan: Any, params: Any, formats: Any) -> Any:
                result = replies[plan.name] = run(self, plan, params, formats)
                return result

            patch(_libpq.LibpqSession, "_run", recording)
            try:
                for name in ("claim", "claim_key"):
                    task_id = str(uuid.uuid4())
                    tracers[name](task_id, (1,), {}, request(task_id, name, 1))
            finally:
                store.drop_schema()
            undo.pop()()
            patch(_libpq.LibpqSession, "_run",
                  lambda self, plan, params, formats: replies[plan.name])

        nothing = lambda *a, **k: None  # noqa: E731
        if "report" in without:
            patch(reporting, "acquired", nothing)
            patch(reporting, "completed", nothing)
            patch(reporting, "duplicate", nothing)
        if "pin" in without:
            patch(callbacks, "pin_callback_ids", nothing)
        if "encode" in without:
            encoded = results.encode(1, "json")
            patch(results, "encode", lambda value, serializer: encoded)
        if "store" in without:
            from celery_claim.store import Acquired

            patch(store, "claim", lambda *a, **k: Acquired(1, 1))
            patch(store, "complete", lambda *a, **k: True)
        if "heartbeat" in without:
            patch(heartbeat, "hold", nothing)
            patch(heartbeat, "drop", nothing)
    except BaseException:
        close()
        raise

    def one(name: str) -> Callable[[str, int], Any]:
        trace = tracers[name]
        task = DUPLICATE_OF.get(name, name)
        if name not in DUPLICATE_OF:
            return lambda task_id, n: trace(task_id, (n,), {}, request(task_id, task, n))
        # Finish a few tasks once; each call then delivers one of them again.
        done = [str(uuid.uuid4()) for _ in range(DUPLICATED)]
        for i, task_id in enumerate(done):
            trace(task_id, (i,), {}, request(task_id, task, i))

        def again(_task_id: str, n: int) -> Any:
            i = n % DUPLICATED
            return trace(done[i], (i,), {}, request(done[i], task, i))
        return again

    return {name: one(name) for name in variants}, close


def _loop(database_url: str, variant: str, tasks: int, without: set[str],
          live: bool = False, metrics: bool = False) -> None:
    tracers, close = _tracers(database_url, without, live, metrics)
    try:
        one = tracers[variant]
        ids = [str(uuid.uuid4()) for _ in range(tasks)]
        for i, task_id in enumerate(ids):
            one(task_id, i)
    finally:
        close()


def cpu(database_url: str, *, tasks: int = 2000, repeats: int = 15,
        without: frozenset[str] = frozenset(), live: bool = False,
        metrics: bool = False) -> dict[str, float]:
    """CPU microseconds per task, each variant's least over ``repeats``
    interleaved chunks of ``tasks`` (the machine's noise only adds)."""
    tracers, close = _tracers(database_url, set(without), live, metrics)
    best: dict[str, list[float]] = {name: [] for name in tracers}
    try:
        for _ in range(repeats):
            for name, one in tracers.items():
                ids = [str(uuid.uuid4()) for _ in range(tasks)]
                started = time.process_time()
                for i, task_id in enumerate(ids):
                    one(task_id, i)
                best[name].append(1e6 * (time.process_time() - started) / tasks)
    finally:
        close()
    return {name: min(values) for name, values in best.items()}


def instructions(database_url: str, variant: str, *, tree: str | None = None,
                 without: frozenset[str] = frozenset(),
                 counts: tuple[int, int] = (200, 1200), live: bool = False,
                 metrics: bool = False) -> int:
    """Instructions per task of ``variant`` under callgrind (the difference of
    two runs, so the start-up cancels out)."""
    collected = []
    for tasks in counts:
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                   sys.executable, "-m", "benchmarks.lifecycle", "--loop", variant,
                   "--tasks", str(tasks), "--database-url", database_url,
                   "--without", ",".join(sorted(without)), *(["--tree", tree] if tree else []),
                   *(["--live"] if live else []), *(["--metrics"] if metrics else [])]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        line = next(line for line in done.stderr.splitlines() if "Collected" in line)
        collected.append(int(line.split()[-1]))
    return (collected[1] - collected[0]) // (counts[1] - counts[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--tree", default=None,
                        help="a checkout whose celery_claim to measure (its parent directory)")
    parser.add_argument("--instructions", action="store_true",
                        help="instructions per task under valgrind, instead of CPU time")
    parser.add_argument("--without", default="",
                        help=f"parts to replace with nothing: {', '.join(PARTS)}")
    parser.add_argument("--variants", default="",
                        help="with --instructions: which to count, comma-separated (default: all; "
                             "plain is always counted; floor only with --live)")
    parser.add_argument("--live", action="store_true",
                        help="real round trips to PostgreSQL, and the floor's task")
    parser.add_argument("--metrics", action="store_true",
                        help="install the Prometheus metrics (celery_claim.metrics) first")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--loop", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    without = frozenset(part for part in args.without.split(",") if part)
    unknown = without - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    if args.tree and not args.instructions:
        sys.path.insert(0, os.path.abspath(args.tree))  # before this checkout's own
    if args.loop is not None:  # one run under valgrind
        _loop(args.database_url, args.loop, args.tasks, without, args.live, args.metrics)
        return
    variants = LIVE_VARIANTS if args.live else VARIANTS
    if args.instructions:
        wanted = {"plain", *(name for name in args.variants.split(",") if name)} \
            if args.variants else set(variants)
        if wanted - set(variants):
            parser.error(f"unknown variants {sorted(wanted - set(variants))}; known: "
                         f"{', '.join(variants)}" + ("" if args.live else " (floor needs --live)"))
        counts: dict[str, float] = {
            name: instructions(args.database_url, name, tree=args.tree, without=without,
                               live=args.live, metrics=args.metrics)
            for name in variants if name in wanted}
        unit = "instructions per task"
    else:
        counts = cpu(args.database_url, tasks=args.tasks, repeats=args.repeats, without=without,
                     live=args.live, metrics=args.metrics)
        unit = "CPU us per task (least of the repeats)"
    base = counts["plain"]
    print(f"celery_claim of {os.path.abspath(args.tree or os.getcwd())}"
          + (f", without {', '.join(sorted(without))}" if without else "")
          + (", metrics installed" if args.metrics else "")
          + (", real round trips" if args.live else ", round trips replaced"))
    print(f"| variant | {unit} | beyond the plain task |")
    print("|---|---|---|")
    for name, value in counts.items():
        print(f"| {name} ({variants[name]}) | {value:,.1f} | {value - base:+,.1f} |")


if __name__ == "__main__":
    main()
