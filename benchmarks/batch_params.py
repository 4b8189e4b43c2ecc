"""Client CPU to build and adapt a coalesced batch's parameters: the JSON
parameter the package sends, against an array parameter per column, as the
batch statements took before.

    python -m benchmarks.batch_params

For batches of 2, 3 and 8 deliveries: ``CoalescedStatements`` builds the
parameters of ``claim_many`` and ``complete_many`` (its statement runner
replaced by one that keeps them), and psycopg's ``Transformer`` adapts them
as the libpq session does before sending; microseconds per batch, the
minimum of five timings. Needs PostgreSQL (``--database-url``) for a
connection's adapters; nothing is sent.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from celery_claim import coalesce

DEFAULT_URL = os.environ.get("CELERY_CLAIM_TEST_DATABASE_URL",
                             "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _arrays_claim(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``claim_many``'s parameters as an array per column (the earlier form)."""
    first = batch[0]
    return {
        "keys": [p["key"] for p in batch], "task_names": [p["task_name"] for p in batch],
        "task_ids": [p["task_id"] for p in batch], "owners": [p["owner"] for p in batch],
        "payload_digests": [p["payload_digest"] for p in batch],
        "leases": [float(p["lease_seconds"]) for p in batch],
        "ttls": [float(p["ttl_seconds"]) for p in batch],
        "retry_failed": first["retry_failed"], "check_payload": first["check_payload"],
    }


def _arrays_complete(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``complete_many``'s parameters as an array per column (the earlier form)."""
    return {
        "keys": [p["key"] for p in batch], "tokens": [p["token"] for p in batch],
        "states": [p["state"] for p in batch], "errors": [p["error"] for p in batch],
        "ttls": [float(p["ttl_seconds"]) for p in batch],
        **{f"{column}s": [p.get(column) for p in batch]
           for column in ("result", "result_content_type", "result_content_encoding")},
    }


def _batches(size: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    claims = [{"key": f"tasks.charge:{n:08d}-5f0c-4c1e-9d6a-1b2c3d4e5f60",
               "task_name": "tasks.charge", "task_id": f"{n:08d}-5f0c-4c1e-9d6a-1b2c3d4e5f60",
               "owner": "celery@worker-1/4242", "payload_digest": None,
               "lease_seconds": 60.0, "ttl_seconds": 86400.0, "retry_failed": False,
               "check_payload": True} for n in range(size)]
    completions = [{"key": p["key"], "token": 1, "state": "succeeded", "error": None,
                    "ttl_seconds": 86400.0, "result": b'{"charged": 1250}',
                    "result_content_type": "application/json",
                    "result_content_encoding": "utf-8"} for p in claims]
    return claims, completions


def _timed(work: Callable[[], None], times: int) -> float:
    """Microseconds per call of ``work``, the minimum of five timings."""
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(times):
            work()
        best = min(best, time.process_time() - start)
    return 1e6 * best / times


def _cases(statements: coalesce.CoalescedStatements, kept: dict[str, Any],
           adapt: Callable[[dict[str, Any]], None], claims: list[dict[str, Any]],
           completions: list[dict[str, Any]]) -> dict[str, Callable[[], None]]:
    def claim_json() -> None:
        statements._claim_many(claims)
        adapt(kept["params"])

    def complete_json() -> None:
        statements._complete_many(completions)
        adapt(kept["params"])

    return {
        "claim_many, JSON": claim_json,
        "claim_many, arrays": lambda: adapt(_arrays_claim(claims)),
        "complete_many, JSON": complete_json,
        "complete_many, arrays": lambda: adapt(_arrays_complete(completions)),
    }


def measure(database_url: str, sizes: Sequence[int] = (2, 3, 8),
            times: int = 5000) -> list[dict[str, Any]]:
    import psycopg
    from psycopg.adapt import PyFormat, Transformer

    dsn = sa.engine.make_url(database_url).set(drivername="postgresql").render_as_string(
        hide_password=False)
    kept: dict[str, Any] = {}

    class _Kept:
        rows: list[Any] = []

    def keep(operation: str, name: str, params: dict[str, Any]) -> _Kept:
        kept["params"] = params
        return _Kept()

    statements = coalesce.CoalescedStatements(keep)
    rows = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        transformer = Transformer(conn)

        def adapt(params: dict[str, Any]) -> None:
            transformer.dump_sequence(list(params.values()), [PyFormat.AUTO] * len(params))

        for size in sizes:
            claims, completions = _batches(size)
            for name, work in _cases(statements, kept, adapt, claims, completions).items():
                rows.append({"batch": size, "form": name, "us": _timed(work, times)})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--times", type=int, default=5000)
    args = parser.parse_args(argv)
    print("| batch | parameters | client CPU µs per batch |")
    print("|---|---|---|")
    for row in measure(args.database_url, times=args.times):
        print(f"| {row['batch']} | {row['form']} | {row['us']:.1f} |")


if __name__ == "__main__":
    main()
