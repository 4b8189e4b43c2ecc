"""Run the benchmarks: ``python -m benchmarks.run [--quick] [--json PATH]``.

Worker benchmarks drain pre-published messages with real ``celery worker``
processes (Redis broker, PostgreSQL claim store) for every variant, pool and
body length, repeated and interleaved; every number is compared with the
plain task measured in the same repetition. Store micro-benchmarks time the
claim statements alone. Prints Markdown tables and writes JSON.

Needs PostgreSQL and Redis (``--database-url``, ``--redis-url``; the
defaults are the test services on 127.0.0.1) and, for the celery-once
column, ``pip install 'celery-claim[bench]'``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import schema as schema_bench
from benchmarks import store as store_bench
from benchmarks import workers
from benchmarks.apps.bench_app import VARIANTS

DEFAULT_DATABASE_URL = os.environ.get(
    "CELERY_CLAIM_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DEFAULT_REDIS_URL = os.environ.get("CELERY_CLAIM_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")

SINGLE_VARIANTS = ("plain", "plain_late", "plain_write", "floor", "floor_twin", "handwritten",
                   "claim", "claim_conflict", "claim_signal", "claim_metrics", "claim_cursor",
                   "claim_alone", "claim_early", "claim_key", "claim_atomic", "once", "dedup")
#: With a body that takes time.
BODY_VARIANTS = ("plain", "plain_late", "floor", "handwritten", "claim")
#: The plain task with the same acking as each variant.
SAME_ACKS = {"plain": "plain", "plain_late": "plain_late", "plain_write": "plain_late",
             "floor": "plain_late", "handwritten": "plain_late", "claim": "plain_late",
             "claim_early": "plain", "claim_key": "plain_late",
             "claim_atomic": "plain_late", "claim_cursor": "plain_late",
             "claim_conflict": "plain_late", "claim_signal": "plain_late",
             "claim_metrics": "plain_late", "floor_twin": "plain_late",
             "claim_alone": "plain_late", "once": "plain", "dedup": "plain_late"}
ACKS = {v: ("early" if SAME_ACKS[v] == "plain" else "late") for v in SAME_ACKS}


def plan(pools: Sequence[str], variants: Sequence[str], bodies: Sequence[float],
         duplicates: Sequence[str]) -> list[workers.Case]:
    cases = []
    for body in bodies:
        for pool in pools:
            chosen = variants if body == 0 else [v for v in BODY_VARIANTS if v in variants]
            needed = {SAME_ACKS[v] for v in chosen} | {"plain"}
            if any(v.startswith("claim") for v in chosen):
                needed.add("floor")  # every ClaimTask row is also a ratio to the floor
            for variant in [v for v in SINGLE_VARIANTS if v in set(chosen) | needed]:
                cases.append(workers.Case(variant, pool, body))
            if body == 0:
                for variant in duplicates:
                    cases.append(workers.Case(variant, pool, body, "dup"))
    return cases


def reordered(cases: Sequence[workers.Case], repeat: int) -> list[workers.Case]:
    """``cases`` with the variants of each pool and body in a new order for
    each pair of repetitions, run forwards in the first of the pair and
    backwards in the second (the same orders from run to run): no variant
    always follows the same neighbour, whose leftovers (its table's
    autovacuum, a cold cache) would otherwise always land on it, and over
    each pair every variant runs as often before another as after it, so
    that a steady drift of the machine favours neither."""
    out: list[workers.Case] = []
    groups: dict[tuple[str, float, str], list[workers.Case]] = defaultdict(list)
    for case in cases:
        groups[(case.pool, case.body_ms, case.workload)].append(case)
    shuffle = random.Random(repeat // 2).shuffle
    for group in groups.values():
        group = list(group)
        if repeat // 2:
            shuffle(group)
        if repeat % 2:
            group.reverse()
        out += group
    return out


def _spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1:
        return fmt.format(median)
    return f"{fmt.format(median)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _outside_backends(run: dict[str, Any]) -> float:
    """PostgreSQL CPU per task outside the clients' backends: the WAL writer,
    the checkpointer, the background writer, autovacuum (0 in results from
    before the benchmark told them apart)."""
    cpu = run["cpu_ms_per_task"]
    return float(cpu.get("postgres_background", 0.0) + cpu.get("postgres_ended", 0.0))


def worker_tables(results: list[dict[str, Any]]) -> str:
    """Markdown tables: one per body length, rows by pool and variant."""
    by_rep: dict[tuple[int, str, float, str, str], dict[str, Any]] = {}
    for r in results:
        if "error" in r:
            continue
        c = r["case"]
        by_rep[(r["repeat"], c["pool"], c["body_ms"], c["variant"], c["workload"])] = r
    grouped: dict[tuple[str, float, str, str], list[dict[str, Any]]] = defaultdict(list)
    for (_, pool, body, variant, workload), r in by_rep.items():
        grouped[(pool, body, variant, workload)].append(r)

    def ratios(pool: str, body: float, variant: str, base: str,
               field: str = "throughput") -> list[float]:
        out = []
        for (rep, p, b, v, w), r in by_rep.items():
            if (p, b, v, w) == (pool, body, variant, "single"):
                baseline = by_rep.get((rep, pool, body, base, "single"))
                if baseline is not None:
                    out.append(r[field] / baseline["throughput"])
        return out

    lines = []
    for body in sorted({k[1] for k in grouped}):
        lines += [f"\n#### Body {body:g} ms: tasks per second, and the ratio to the plain task "
                  "in the same repetition (median, min-max)\n",
                  "| pool | variant | acks | tasks/s | vs plain, same acks | "
                  "vs plain, Celery defaults | vs floor | worker CPU ms/task | "
                  "PostgreSQL CPU ms/task | of which outside the backends |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for pool in workers.POOLS:
            for variant in SINGLE_VARIANTS:
                runs = grouped.get((pool, body, variant, "single"))
                if not runs:
                    continue
                same = ratios(pool, body, variant, SAME_ACKS[variant])
                default = ratios(pool, body, variant, "plain")
                floor = ratios(pool, body, variant, "floor")
                lines.append(
                    f"| {pool} | {variant} | {ACKS[variant]} | "
                    f"{_spread([r['throughput'] for r in runs], '{:.0f}')} | "
                    f"{_spread(same) if variant != SAME_ACKS[variant] else '1'} | "
                    f"{_spread(default) if variant != 'plain' else '1'} | "
                    f"{_spread(floor) if variant != 'floor' else '1'} | "
                    f"{_spread([r['cpu_ms_per_task']['worker'] for r in runs])} | "
                    f"{_spread([r['cpu_ms_per_task']['postgres'] for r in runs])} | "
                    f"{_spread([_outside_backends(r) for r in runs], '{:.3f}')} |")
    dup = [k for k in grouped if k[3] == "dup"]
    if dup:
        lines += ["\n#### Every message delivered twice (the copy marked redelivered, as "
                  "the Redis transport restores it)\n",
                  "| pool | variant | first deliveries/s | duplicates/s | duplicate cost vs "
                  "first | duplicate bodies run |",
                  "|---|---|---|---|---|---|"]
        for pool in workers.POOLS:
            for variant in workers.DUPLICATE_VARIANTS:
                runs = grouped.get((pool, 0.0, variant, "dup"))
                if not runs:
                    continue
                cost = [r["first_throughput"] / r["dup_throughput"] for r in runs]
                lines.append(
                    f"| {pool} | {variant} | "
                    f"{_spread([r['first_throughput'] for r in runs], '{:.0f}')} | "
                    f"{_spread([r['dup_throughput'] for r in runs], '{:.0f}')} | "
                    f"{_spread(cost)} | "
                    f"{_spread([float(r['duplicate_bodies_run']) for r in runs], '{:.0f}')} "
                    f"of {runs[0]['messages']} |")
    errors = [r for r in results if "error" in r]
    if errors:
        lines.append(f"\n{len(errors)} run(s) failed: " + "; ".join(
            f"{workers.Case(**r['case']).label}: {r['error']}" for r in errors))
    return "\n".join(lines)


def store_tables(results: dict[str, Any]) -> str:
    def ms(s: dict[str, float]) -> str:
        return f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f}"

    lines = ["\n#### Store: claim (acquire + complete) with concurrent clients, fresh keys\n",
             "| clients | claims/s | acquire p50 / p99 ms | complete p50 / p99 ms |",
             "|---|---|---|---|"]
    for row in results["clients"]:
        lines.append(f"| {row['clients']} | {row['claims_per_s']:.0f} | {ms(row['acquire'])} | "
                     f"{ms(row['complete'])} |")
    c = results["contention"]
    lines += [f"\nContention: {c['clients']} clients racing for {c['keys']} keys: "
              f"{c['attempts_per_s']:.0f} acquire attempts/s ({c['wins_per_s']:.0f} won), "
              f"acquire p50 / p99 {ms(c['acquire'])} ms.\n",
              "#### Store: table size (one client)\n",
              "| finished rows | table + indexes MB | acquire p50 / p99 ms | "
              "complete p50 / p99 ms | duplicate acquire p50 / p99 ms | stale listing ms | "
              "stats ms |",
              "|---|---|---|---|---|---|---|"]
    for row in results["sizes"]:
        lines.append(f"| {row['rows']:,} | {row['table_mb']:.0f} | {ms(row['acquire'])} | "
                     f"{ms(row['complete'])} | {ms(row['duplicate'])} | "
                     f"{row.get('stale_list_ms', 0):.1f} | {row.get('stats_ms', 0):.1f} |")
    p = results["purge"]
    lines.append(f"\nPurge of {p['deleted']:,} expired rows (batches of 1,000) took "
                 f"{p['purge_seconds']:.1f} s; acquire p50 / p99 before: "
                 f"{ms(p['acquire_before'])} ms, during: {ms(p['acquire_during'])} ms.")
    if "paths" in results:
        lines.append(paths_table(results["paths"]))
    return "\n".join(lines)


def paths_table(rows: list[dict[str, Any]]) -> str:
    lines = ["\n#### Store: one claim (acquire + complete) by path, one client\n",
             "| pause between acquire and complete | path | wall ms per claim "
             "(beyond the pause) | client CPU ms per claim | PostgreSQL CPU ms per claim |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['pause_ms']:g} ms | {row['path']} | {row['wall_ms']:.3f} | "
                     f"{row['cpu_ms']:.3f} | {row['server_cpu_ms']:.3f} |")
    return "\n".join(lines)


def coalesce_table(rows: list[dict[str, Any]]) -> str:
    lines = ["\n#### Store: 8 threads of one process, claim + complete on fresh keys "
             "(median of the rounds; per round)\n",
             "| body | path | claims/s | vs floor | client CPU ms per claim | "
             "PostgreSQL CPU ms per claim | claims sent in batches | per round |",
             "|---|---|---|---|---|---|---|---|"]
    floors = {r["pause_ms"]: r["claims_per_s"] for r in rows if r["path"] == "floor"}
    for r in rows:
        lines.append(f"| {r['pause_ms']:g} ms | {r['path']} | {r['claims_per_s']:.0f} | "
                     f"{r['claims_per_s'] / floors[r['pause_ms']]:.2f} | {r['cpu_ms']:.3f} | "
                     f"{r['server_cpu_ms']:.3f} | {100 * r['batched_share']:.0f}% | "
                     + ", ".join(f"{x:.0f}" for x in r["rates"]) + " |")
    return "\n".join(lines)


def schema_table(rows: list[dict[str, Any]]) -> str:
    lines = ["\n#### Store: where the claim's PostgreSQL cost goes, one client "
             "(medians of the rounds; ratios taken within each round)\n",
             "| variant | what it is | PostgreSQL CPU ms per claim | vs floor | vs before | "
             "client CPU ms per claim | WAL bytes per claim | HOT completions | per round |",
             "|---|---|---|---|---|---|---|---|---|"]
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by[row["variant"]].append(row)

    def median(name: str, field: str) -> float:
        return statistics.median(r[field] for r in by[name])

    def ratio(name: str, base: str) -> str:
        if base not in by:
            return "-"
        per_round = {r["round"]: r["server_cpu_ms"] for r in by[base]}
        ratios = [r["server_cpu_ms"] / per_round[r["round"]] for r in by[name]]
        return f"{statistics.median(ratios):.2f}"

    for name, (what, _) in schema_bench.VARIANTS.items():
        if name not in by:
            continue
        lines.append(f"| {name} | {what} | {median(name, 'server_cpu_ms'):.3f} | "
                     f"{ratio(name, 'floor')} | {ratio(name, 'before')} | "
                     f"{median(name, 'client_cpu_ms'):.3f} | {median(name, 'wal_bytes'):.0f} | "
                     f"{100 * median(name, 'hot_share'):.0f}% | "
                     + ", ".join(f"{r['server_cpu_ms']:.3f}" for r in by[name]) + " |")
    duplicates = [name for name in schema_bench.DUPLICATES if name in by]
    if duplicates:
        lines += ["\nA duplicate of a finished claim, the same statement:\n",
                  "| variant | PostgreSQL CPU ms per duplicate | vs its first delivery | "
                  "per round |", "|---|---|---|---|"]
        for name in duplicates:
            rows_ = by[name]
            shares = [r["duplicate_cpu_ms"] / r["server_cpu_ms"] for r in rows_]
            lines.append(f"| {name} | {median(name, 'duplicate_cpu_ms'):.3f} | "
                         f"{statistics.median(shares):.2f} | "
                         + ", ".join(f"{r['duplicate_cpu_ms']:.3f}" for r in rows_) + " |")
    return "\n".join(lines)


def calls_table(rows: list[dict[str, Any]]) -> str:
    lines = ["\n#### Store: client CPU per call, one client (median; per round)\n",
             "| call | client CPU ms | wall ms | per round |", "|---|---|---|---|"]
    for row in rows:
        rounds = ", ".join(f"{v:.3f}" for v in row["cpu_ms_rounds"])
        lines.append(f"| {row['call']} | {row['cpu_ms']:.3f} | {row['wall_ms']:.3f} | {rounds} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    def out(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False,
                                  timeout=10).stdout.strip()
        except OSError:
            return ""

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import celery
    import kombu
    import psycopg
    import sqlalchemy

    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "kernel": platform.release(), "celery": celery.__version__,
            "kombu": kombu.__version__, "sqlalchemy": sqlalchemy.__version__,
            "psycopg": psycopg.__version__, "redis_server": out("redis-server", "--version"),
            "postgresql": out("psql", "--version"),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: checks that everything runs, measures nothing")
    parser.add_argument("--suite", default="workers,store",
                        help="workers, store or both; or paths: the store's paths comparison; "
                        "calls: client CPU per store call; schema: where the claim's PostgreSQL "
                        "CPU goes")
    parser.add_argument("--pools", default=",".join(workers.POOLS))
    parser.add_argument("--variants", default=",".join(SINGLE_VARIANTS))
    parser.add_argument("--duplicates", default=",".join(workers.DEFAULT_DUPLICATES),
                        help="variants whose every message is delivered twice")
    parser.add_argument("--bodies", default="0,10", help="body lengths in ms")
    parser.add_argument("--messages", type=int, default=1500,
                        help="messages per run with a 0 ms body")
    parser.add_argument("--body-messages", type=int, default=400,
                        help="messages per run with a longer body")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="0,1000000,10000000",
                        help="claims table sizes for the store benchmark")
    parser.add_argument("--purge-rows", type=int, default=1_000_000)
    parser.add_argument("--store-ops", type=int, default=10_000,
                        help="claims per table size in the store benchmark (p50/p99 over these)")
    parser.add_argument("--pause-ms", type=float, default=0.0,
                        help="schema suite: an idle pause after each statement of a first "
                             "delivery, as in a worker (colder caches); 0: back to back")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--loglevel", default="WARNING",
                        help="worker log level (Celery's default: WARNING)")
    parser.add_argument("--prefetch-multiplier", type=int, default=4,
                        help="worker prefetch multiplier (Celery's default: 4)")
    parser.add_argument("--json", type=Path, default=Path("benchmark-results.json"))
    parser.add_argument("--profile", type=Path, default=None,
                        help="directory: also record py-spy profiles of a solo worker")
    parser.add_argument("--profile-pool", default="solo",
                        help="the pool of the profiled worker (threads: every thread)")
    args = parser.parse_args(argv)

    pools = args.pools.split(",")
    variants = [v for v in args.variants.split(",") if v]
    duplicates = [v for v in args.duplicates.split(",") if v]
    bodies = [float(b) for b in args.bodies.split(",") if b]
    if args.quick:
        pools, bodies, args.repeats = ["solo"], [0.0], 1
        variants = ["plain", "plain_late", "floor_twin", "claim", "dedup", "once"]
        duplicates = ["plain_late", "floor", "claim", "dedup"]
        args.messages = args.body_messages = 40
    if importlib.util.find_spec("celery_once") is None:
        print("celery-once is not installed (pip install 'celery-claim[bench]'): skipping it",
              file=sys.stderr)
        variants = [v for v in variants if v != "once"]
        duplicates = [v for v in duplicates if v != "once"]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    report: dict[str, Any] = {"machine": machine(), "command": " ".join(
        ["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])])}
    services = workers.Services(args.database_url, args.redis_url,
                                prefetch_multiplier=args.prefetch_multiplier,
                                loglevel=args.loglevel)
    text = []
    if "workers" in args.suite:
        cases = plan(pools, variants, bodies, duplicates)
        results = []
        for repeat in range(args.repeats):
            for case in reordered(cases, repeat):
                messages = args.messages if case.body_ms == 0 else args.body_messages
                result = workers.run_case(case, messages, services, log=log)
                result["repeat"] = repeat
                results.append(result)
        report["workers"] = results
        text.append(worker_tables(results))
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        for variant in ("plain_late", "floor", "handwritten", "claim"):
            out = args.profile / f"{variant}.txt"
            workers.run_case(workers.Case(variant, args.profile_pool, 0), 4 * args.messages,
                             services, log=log, profile=out)
            log(f"profile: {out}")
    if "store" in args.suite:
        sizes = (0, 10_000) if args.quick else tuple(int(s) for s in args.sizes.split(","))
        report["store"] = store_bench.run(
            args.database_url, quick=args.quick, sizes=sizes,
            purge_rows=5_000 if args.quick else args.purge_rows,
            ops=None if args.quick else args.store_ops, log=log)
        text.append(store_tables(report["store"]))
    elif "paths" in args.suite:  # the paths comparison alone (the store suite includes it)
        report["paths"] = store_bench.paths(args.database_url, 50 if args.quick else 5000)
        text.append(paths_table(report["paths"]))
    if "coalesce" in args.suite:  # threads of one process: coalesced claims, alone, floor
        report["coalesce"] = [row for pause in (0.0, 10.0) for row in store_bench.coalesced(
            args.database_url, threads=8, claims=40 if args.quick else 400, pause_ms=pause,
            rounds=1 if args.quick else 3)]
        text.append(coalesce_table(report["coalesce"]))
    if "schema" in args.suite:  # PostgreSQL's cost per claim, one thing taken away at a time
        report["schema"] = schema_bench.costs(args.database_url, 50 if args.quick else 2000,
                                              rounds=1 if args.quick else 9,
                                              pause_ms=args.pause_ms)
        text.append(schema_table(report["schema"]))
    if "calls" in args.suite:  # client CPU per store call
        report["calls"] = store_bench.calls(args.database_url, 50 if args.quick else 2000)
        text.append(calls_table(report["calls"]))
    m = report["machine"]
    header = (f"Machine: {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, Celery "
              f"{m['celery']}, {m['postgresql']}, {m['redis_server'].split(' sha')[0]}; "
              f"command: {report['command']}")
    print(header + "\n" + "\n".join(text))
    args.json.write_text(json.dumps(report, indent=1, default=str))
    log(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so every run's workers, tables and keys are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
