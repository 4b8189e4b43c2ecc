"""PostgreSQL's work per claim, counted in instructions: the same count on
every run, where the CPU-time suites move with the machine.

    python -m benchmarks.instructions [--variants floor,claim,...] [--ops 200] [--json PATH]

It starts a PostgreSQL server of its own (the installed binaries, a fresh
data directory in a temporary directory, a Unix socket there) under
valgrind's callgrind, which counts the instructions each of the server's
processes executes, and writes the count when the process ends. For each
variant, one client claims keys as ``python -m benchmarks.run --suite
schema`` does (prepared autocommit statements with generic plans, fresh
keys, acquire then complete): twice, each time on a new connection and
table, once ``warm-up + ops`` claims and once ``warm-up + 3 * ops``. The
difference between the two backends' counts, over ``2 * ops``, is the
backend's instructions per claim, without the connection's start and end.
For the floor and the claim statements it also counts a duplicate of a
finished claim: the same keys delivered again right after each claim.

What it counts and what it does not: the instructions PostgreSQL's backend
runs in user space (parsing the messages, setting up and running each
statement's plan, the heap, the indexes, writing and flushing the WAL from
its side). Not the system calls (the socket, the WAL's ``fdatasync``), which
are the same for the floor and the claim (two statements and two commits
per claim),
not the other server processes, and not the cost of cold caches: an
instruction counts the same whether its code and data were in the CPU's
caches or not (docs/performance.md, "In a worker, the statements run
cold"). The floor and the claim count the same in two runs to within
0.05%; another variant moved by 0.7% (the tables' names and object ids
differ): a difference under about 3,000 instructions per claim is not a
difference. The count depends on ``--ops``
and ``--warmup``: compare variants counted with the same ones.

``--keep DIR`` keeps each variant's two callgrind files (``VARIANT.few``,
``VARIANT.many``) for ``callgrind_annotate``; with both ``floor`` and
``claim`` among the variants it also prints the functions whose
instructions per claim (the difference between the two files over
``2 * ops``) differ most between the two: their own instructions, or with
their callees' (``--inclusive``: the phases of a statement, such as
``standard_ExecutorStart``), and the same per duplicate of a finished claim
(a variant that answers duplicates keeps two files more, ``VARIANT.few_dup``
and ``VARIANT.many_dup``; the floor's duplicate is its acquire, which
returns no row).

Variants: those of ``--suite schema`` (:data:`benchmarks.schema.VARIANTS`),
those of :mod:`benchmarks.claim_parts` (its floor and claim are the schema
suite's), and six of its own: ``nothing`` (two statements that do nothing:
what two round trips cost the backend), ``floor_acquire`` and
``claim_statement`` (the floor's acquire or the claim statement, and a
statement that does nothing in place of the completion: the two statements
told apart), and ``floor_wide`` (the floor's two statements on the claim's
table, its eighteen columns and the primary key only: the wider row told
apart from what the claim's statements do with it), ``takeover`` and
``takeover_conflict`` (a claim, its release, a second claim that takes it
over, its completion: with the claim statement, or with ``claim_conflict``'s,
whose takeover is the insert's ``ON CONFLICT DO UPDATE``).

Needs valgrind and PostgreSQL's server binaries (``/usr/lib/postgresql/*/bin``
or ``pg_config --bindir``); as root, the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks import claim_parts, schema
from benchmarks.schema import Claim, _Floor, _floor, _Statements, create_claims_table
from celery_claim.records import Acquired, Lost
from celery_claim.sql import make_table
from celery_claim.statements import Statements, driver_dialect

__all__ = ["VARIANTS", "count", "main", "server"]


class _FloorWide(_Floor):
    """The floor's statements on the claim's table, without its expiry index:
    the columns the floor does not write take their defaults (``NULL``) and
    the few the table requires get constants."""

    def __init__(self, conn: Any, table: str) -> None:  # not the floor's table
        t = make_table(table)
        create_claims_table(conn, t)
        conn.execute(f"DROP INDEX {table}_expires_idx")
        self.conn, self.pause = conn, 0.0
        self.acquire = (
            f"INSERT INTO {table} AS t (key, state, token, task_name, task_id, attempt, "  # noqa: S608
            "owner, created_at, updated_at) VALUES (%s, 'running', 1, 'bench.claim', 'id', 1, "
            "'owner', '2026-01-01', '2026-01-01') ON CONFLICT (key) DO UPDATE SET "
            "state = 'running', token = t.token + 1 WHERE t.state <> 'succeeded' RETURNING token")
        self.complete = f"UPDATE {table} SET state = 'succeeded' WHERE key = %s AND token = %s"  # noqa: S608


#: A statement that does nothing, in place of a completion: one round trip.
_NOTHING = "SELECT %(token)s::bigint"


def _nothing(conn: Any, table: str) -> Claim:
    """Two statements that do nothing (one round trip each): what any claim's
    two round trips cost the backend before any work."""
    return _Statements(conn, "SELECT 1 AS token WHERE %(key)s::text IS NOT NULL", _NOTHING)


def _acquire_only(make: Callable[[Any, str], Claim]) -> Callable[[Any, str], Claim]:
    """``make``'s acquire (or claim statement), and a statement that does
    nothing in place of its completion."""
    def only(conn: Any, table: str) -> Claim:
        claim = make(conn, table)
        if isinstance(claim, _Floor):
            claim.acquire = claim.acquire.replace("(%s, ", "(%(key)s, ")
            return _Statements(conn, claim.acquire, _NOTHING)
        claim.complete = _NOTHING  # type: ignore[attr-defined]
        return claim
    return only


class _Takeover(_Statements):
    """A claim given back and taken over: the acquire, the release, the
    acquire again (a takeover, the next token), the completion."""

    release = ""

    def _token(self, key: str) -> int:
        cursor = self._acquire(key)
        row = dict(zip([c.name for c in cursor.description], cursor.fetchone(), strict=True))
        if row.get("settled") is not None:  # the settle function's answer
            taken = Lost.settled(row["settled"])
            assert isinstance(taken, Acquired), taken
            return taken.token
        return int(row["token"])

    def __call__(self, key: str) -> None:
        token = self._token(key)
        self.conn.execute(self.release, {"key": key, "token": token, "error": None,
                                         "ttl_seconds": 3600.0}, prepare=True).fetchone()
        token = self._token(key)
        assert token == 2, token
        self.conn.execute(self.complete, {**schema._COMPLETE, "key": key, "token": token},
                          prepare=True).fetchone()


def _takeover(claim: str) -> Callable[[Any, str], Claim]:
    """:class:`_Takeover` with the claim statement ``claim``."""
    def make(conn: Any, table: str) -> Claim:
        t = make_table(table)
        create_claims_table(conn, t)
        statements = Statements(t, "postgresql")
        dialect = driver_dialect("psycopg")
        cycle = _Takeover(conn, statements.driver(claim, dialect).sql,
                          statements.driver("complete_with_result", dialect).sql)
        cycle.release = statements.driver("release", dialect).sql
        return cycle
    return make


#: Each variant: what it is, and how to make its table and claim on a connection.
VARIANTS: dict[str, tuple[str, Callable[[Any, str], Claim]]] = {
    **schema.VARIANTS,
    "floor_wide": ("the floor's statements on the claim's table (no expiry index)", _FloorWide),
    "nothing": ("two statements that do nothing: two round trips", _nothing),
    "floor_acquire": ("the floor's acquire, and a statement that does nothing",
                      _acquire_only(_floor)),
    "claim_statement": ("the claim statement, and a statement that does nothing",
                        _acquire_only(schema.VARIANTS["claim"][1])),
    "takeover": ("a claim released and taken over: claim, release, claim again, complete",
                 _takeover("claim")),
    "takeover_conflict": ("the same with claim_conflict's claim statement",
                          _takeover("claim_conflict")),
    **{name: variant for name, variant in claim_parts.VARIANTS.items()
       if name not in schema.VARIANTS},  # the floor and the claim: the same as the schema suite's
}

#: The variants whose claim statement also answers a duplicate.
DUPLICATES = tuple(dict.fromkeys(
    ("floor", *schema.DUPLICATES, *claim_parts.DUPLICATES)))

#: What runs when ``--variants`` is not given: the floor, the claim, and the
#: steps between them.
DEFAULT = ("nothing", "floor_acquire", "floor", "floor_wide", "no_expiry_index", "no_result",
           "no_lost_branch", "acquire_in_cte", "claim_conflict", "claim_statement", "claim",
           "stale_index", "completion_last", "function")


def _bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                   key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()])
    if found:
        return found[-1]
    pg_config = shutil.which("pg_config")
    if pg_config:
        return Path(subprocess.check_output([pg_config, "--bindir"], text=True).strip())
    raise RuntimeError("no PostgreSQL server binaries: install PostgreSQL's server package")


def _as_owner() -> dict[str, Any]:
    """``subprocess`` arguments that run a command as the ``postgres`` user
    when running as root (initdb and postgres refuse root)."""
    return {"user": "postgres", "group": "postgres", "extra_groups": []} \
        if os.geteuid() == 0 else {}


@contextlib.contextmanager
def server() -> Iterator[tuple[str, Path]]:
    """A throwaway PostgreSQL server under callgrind: yields its DSN and the
    directory where each process's count lands (``callgrind.<pid>``); the
    server, every process it started and its directory are gone afterwards.

    It listens on a Unix socket in its own directory only (no port to race
    for), with autovacuum off and no timed checkpoint during a run (a
    checkpoint makes the next change of each page log the whole page)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is not installed (Debian: apt-get install valgrind)")
    bindir = _bindir()
    # /tmp, not $TMPDIR: the postgres user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="celery-claim-instructions-", dir="/tmp"))
    data, counts = root / "data", root / "counts"
    process: subprocess.Popen[bytes] | None = None
    try:
        counts.mkdir()
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
            shutil.chown(counts, "postgres")
        initdb = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
             "--no-sync"], capture_output=True, text=True, cwd=root, **_as_owner())
        if initdb.returncode:
            raise RuntimeError(f"initdb failed: {initdb.stderr[-2000:]}")
        with (root / "server.log").open("wb") as log:
            process = subprocess.Popen(
                [valgrind, "--tool=callgrind", "--quiet",
                 f"--callgrind-out-file={counts}/callgrind.%p",
                 str(bindir / "postgres"), "-D", str(data), "-c", "listen_addresses=",
                 "-c", f"unix_socket_directories={root}", "-c", "autovacuum=off",
                 "-c", "checkpoint_timeout=1d", "-c", "max_wal_size=10GB"],
                stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
                **_as_owner())
        dsn = f"host={root} dbname=postgres user=postgres"
        import psycopg

        deadline = time.monotonic() + 120
        while True:
            try:
                psycopg.connect(dsn, connect_timeout=5).close()
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server under callgrind did not start: "
                                       + (root / "server.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        yield dsn, counts
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):  # and whatever is left of it
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


def _instructions(counts: Path, pid: int, timeout: float = 120.0) -> int:
    """The instructions process ``pid`` ran, once it has ended and its count is written."""
    path = counts / f"callgrind.{pid}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text().splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
        time.sleep(0.1)
    raise RuntimeError(f"no count from backend {pid} within {timeout} s")


def _backend(dsn: str, counts: Path, make: Callable[[Any, str], Claim], claims: int,
             duplicates: bool, keep: Path | None = None) -> int:
    """The instructions of one backend that makes a table and runs ``claims``
    claims on it (each followed by its duplicate, if ``duplicates``); its
    callgrind file copied to ``keep``, if given."""
    import uuid

    import psycopg

    table = f"bench_instr_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        # What the store's claim connections run with.
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute("SET synchronous_commit = on")
        one = make(conn, table)
        pid = conn.info.backend_pid
        for i in range(claims):
            one(f"bench.claim:{i}")
            if duplicates:
                one.again(f"bench.claim:{i}")  # type: ignore[attr-defined]
    try:
        total = _instructions(counts, pid)
        if keep is not None:
            shutil.copyfile(counts / f"callgrind.{pid}", keep)
        (counts / f"callgrind.{pid}").unlink()  # a later backend may get the same pid
        return total
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f"DROP TABLE IF EXISTS {table}")


def count(dsn: str, counts: Path, make: Callable[[Any, str], Claim], ops: int = 200,
          warmup: int = 100, duplicates: bool = False,
          keep: Path | None = None) -> dict[str, float]:
    """Instructions per claim (and, with ``duplicates``, per duplicate) of one
    variant, as the difference between two backends. ``keep``: a path prefix
    for the two backends' callgrind files (``{keep}.few``, ``{keep}.many``)."""
    few = _backend(dsn, counts, make, warmup + ops, False,
                   keep and keep.with_name(keep.name + ".few"))
    many = _backend(dsn, counts, make, warmup + 3 * ops, False,
                    keep and keep.with_name(keep.name + ".many"))
    row = {"claim": (many - few) / (2 * ops)}
    if duplicates:
        few_d = _backend(dsn, counts, make, warmup + ops, True,
                         keep and keep.with_name(keep.name + ".few_dup"))
        many_d = _backend(dsn, counts, make, warmup + 3 * ops, True,
                          keep and keep.with_name(keep.name + ".many_dup"))
        row["duplicate"] = (many_d - few_d) / (2 * ops) - row["claim"]
    return row


def functions(keep: Path, ops: int, inclusive: bool = False,
              duplicate: bool = False) -> dict[str, float]:
    """Instructions per claim in each function: its own, or with its callees'
    (``inclusive``), from the two callgrind files :func:`count` kept at
    ``keep``, the difference between them over ``2 * ops`` claims
    (``callgrind_annotate``, which comes with valgrind); or per duplicate
    (``duplicate``, from the four files of a variant that answers one)."""
    def annotate(path: Path) -> dict[str, int]:
        out = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no",
                              f"--inclusive={'yes' if inclusive else 'no'}", str(path)],
                             check=True, capture_output=True, text=True).stdout
        found = {}
        for line in out.splitlines():
            match = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*)$", line)
            if match and "PROGRAM TOTALS" not in line:
                name = match.group(2).split(" [")[0].rsplit(":", 1)[-1]  # no file
                found[name] = found.get(name, 0) + int(match.group(1).replace(",", ""))
        return found

    def per_claim(suffix: str) -> dict[str, float]:
        few = annotate(keep.with_name(f"{keep.name}.few{suffix}"))
        many = annotate(keep.with_name(f"{keep.name}.many{suffix}"))
        return {name: (many.get(name, 0) - few.get(name, 0)) / (2 * ops)
                for name in set(few) | set(many)}

    claims = per_claim("")
    if not duplicate:
        return claims
    # Each claim followed by its duplicate, less the claims alone.
    both = per_claim("_dup")
    return {name: both.get(name, 0) - claims.get(name, 0) for name in set(both) | set(claims)}


def difference(keep: Path, a: str, b: str, ops: int, top: int = 20,
               inclusive: bool = False, duplicate: bool = False) -> str:
    """The functions whose instructions per claim (or per duplicate) differ
    most between variants ``a`` and ``b`` (kept in the directory ``keep``):
    their own, or with their callees' (``inclusive``)."""
    first, second = (functions(keep / name, ops, inclusive, duplicate) for name in (a, b))
    by = sorted(set(first) | set(second),
                key=lambda name: -abs(second.get(name, 0) - first.get(name, 0)))
    lines = [f"| function | {a} | {b} | difference |", "|---|---|---|---|"]
    for name in by[:top]:
        lines.append(f"| `{name}` | {first.get(name, 0):,.0f} | {second.get(name, 0):,.0f} | "
                     f"{second.get(name, 0) - first.get(name, 0):+,.0f} |")
    return "\n".join(lines)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Instructions per claim, and against the floor and the claim."""
    by = {row["variant"]: row for row in rows}
    floor, claim = (by.get(name, {}).get("claim") for name in ("floor", "claim"))
    lines = ["| variant | what it is | instructions per claim | against the floor | "
             "against the claim | per duplicate |", "|---|---|---|---|---|---|"]
    for row in rows:
        n = row["claim"]
        lines.append(
            f"| {row['variant']} | {VARIANTS[row['variant']][0]} | {n:,.0f} | "
            + (f"{n - floor:+,.0f}" if floor is not None else "-") + " | "
            + (f"{n - claim:+,.0f}" if claim is not None else "-") + " | "
            + (f"{row['duplicate']:,.0f}" if row.get("duplicate") is not None else "-") + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(DEFAULT),
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--ops", type=int, default=200,
                        help="the claims between the two backends' counts are 2 * ops")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--json", help="also write the counts here")
    parser.add_argument("--keep", type=Path, default=None,
                        help="a directory to keep each variant's callgrind files in "
                             "(VARIANT.few and VARIANT.many; with duplicates, VARIANT.few_dup "
                             "and VARIANT.many_dup too), for callgrind_annotate")
    parser.add_argument("--inclusive", action="store_true",
                        help="with --keep: the functions' counts with their callees'")
    args = parser.parse_args(argv)
    names = [name for name in args.variants.split(",") if name]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    rows = []
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    with server() as (dsn, counts):
        for name in names:
            row = count(dsn, counts, VARIANTS[name][1], args.ops, args.warmup,
                        duplicates=name in DUPLICATES,
                        keep=args.keep / name if args.keep is not None else None)
            rows.append({"variant": name, **row})
            print(f"{name}: {row}", flush=True)
    print(table(rows))
    if args.keep is not None and {"floor", "claim"} <= set(names):
        print("\nInstructions per claim by function ("
              + ("with their callees'" if args.inclusive else "their own")
              + "), the floor against the claim:")
        print(difference(args.keep, "floor", "claim", args.ops, inclusive=args.inclusive))
        print("\nInstructions per duplicate of a finished claim by function, the same way:")
        print(difference(args.keep, "floor", "claim", args.ops, inclusive=args.inclusive,
                         duplicate=True))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
