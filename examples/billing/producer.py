"""Create orders, publish each charge job several times, and count the charges.

    python -m examples.billing.producer --orders 50 --copies 3

Run a worker first: ``celery -A examples.billing.app worker --concurrency 4``.
"""

from __future__ import annotations

import argparse
import time

import sqlalchemy as sa

from examples.billing.app import app
from examples.billing.models import charges, metadata, orders
from examples.billing.tasks import charge


def setup(engine: sa.Engine, count: int) -> None:
    """Fresh orders 1..count, no charges."""
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(charges.delete())
        conn.execute(orders.delete())
        conn.execute(orders.insert(), [{"id": n, "amount_cents": 100 * n, "status": "new"}
                                       for n in range(1, count + 1)])


def publish(count: int, copies: int) -> None:
    """Every order's job, ``copies`` times: a web request retried, a beat run twice."""
    with app.producer_or_acquire() as producer:
        for n in range(1, count + 1):
            for _ in range(copies):
                charge.apply_async((n, 100 * n), producer=producer)


def count_charges(engine: sa.Engine) -> tuple[int, int]:
    """(charges made, orders charged)."""
    with engine.connect() as conn:
        made = conn.execute(sa.select(sa.func.count()).select_from(charges)).scalar_one()
        charged = conn.execute(sa.select(sa.func.count(sa.distinct(charges.c.order_id))))
        return int(made), int(charged.scalar_one())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=50)
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    engine = sa.create_engine(app.conf.claim_database_url)
    setup(engine, args.orders)
    publish(args.orders, args.copies)
    deadline = time.monotonic() + args.timeout
    while count_charges(engine)[1] < args.orders and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # let any late duplicate finish: it must not charge again
    made, charged = count_charges(engine)
    print(f"{args.orders} orders, {args.orders * args.copies} jobs published, "
          f"{made} charges made, {charged} orders charged")
    engine.dispose()
    return 0 if made == charged == args.orders else 1


if __name__ == "__main__":
    raise SystemExit(main())
