"""The world of the canvas and life-cycle tests: a scenario running ``canvas_app``.

``canvas`` is a :class:`support.scenario.Scenario` with a result backend of its own
(the Redis one under the scenario's key prefix, or Celery's database backend
in a PostgreSQL schema of its own, dropped afterwards) and queries over the
body starts ``canvas_app`` counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from support.scenario import Scenario

MODULE = "canvas_app"


class Canvas:
    """A scenario running ``canvas_app``, with a result backend of its own."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.schema = f"{scenario.name}_results"
        self.module: Any = None

    def prepare(self, backend: str, *, duplicate: bool = True, **env: str) -> Any:
        """Import the app for ``backend`` (``redis`` or ``database``) and create its tables."""
        if backend == "database":
            with self.scenario.engine.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))
        self.module = self.scenario.app_module(
            MODULE, CLAIM_TEST_BACKEND=backend, CLAIM_TEST_SCHEMA=self.schema,
            CLAIM_TEST_DUPLICATE="1" if duplicate else "0", **env)
        self.scenario.create_tables(self.module)
        return self.module

    def worker(self, pool: str = "prefork", concurrency: int = 2, **env: str) -> Any:
        return self.scenario.worker(pool, concurrency, module=MODULE, **env)

    def drain(self, claims: bool = True) -> None:
        """Wait until nothing is queued, held or running (a shorter settle than the default)."""
        self.scenario.drain(settle=1.0, claims=claims)

    def deliveries(self, task: str) -> int:
        return self.scenario.marker(f"deliveries:{task}")

    def runs(self, kind: str) -> Counter[int]:
        """How many times each record's body started."""
        return Counter(self.scenario.effects_per_record(kind))

    def assert_once(self, kind: str, records: Any) -> None:
        """Each record's body started exactly once: none doubled, none lost."""
        runs = self.runs(kind)
        expected = set(records)
        doubled = {r: n for r, n in sorted(runs.items()) if n > 1}
        lost = sorted(expected - set(runs))
        assert (doubled, lost) == ({}, []), (
            f"{kind}: {len(doubled)} of {len(expected)} ran more than once {doubled}, "
            f"{len(lost)} never ran {lost}")
        assert set(runs) == expected

    def chord_inputs(self, kind: str) -> list[int]:
        """The header results the chord's callback was called with, in order."""
        rows = self.scenario.rows(
            f'SELECT record_id FROM "{self.scenario.table}_effects" WHERE kind = :kind '
            "ORDER BY record_id, id", kind=f"{kind}.input")
        return [row.record_id for row in rows]

    def assert_chord_once(self, kind: str, parts: Any) -> None:
        """One callback run, given each header result exactly once."""
        callbacks = self.runs(f"{kind}.callback")[0]
        inputs = self.chord_inputs(kind)
        assert (callbacks, inputs) == (1, sorted(parts)), (
            f"{kind}: the callback ran {callbacks} times, with the results "
            f"{','.join(map(str, inputs))}")

    def drop(self) -> None:
        with self.scenario.engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))


def world(scenario: Scenario) -> Iterator[Canvas]:
    """The body of each test module's ``canvas`` fixture: a Canvas, cleaned up after."""
    world = Canvas(scenario)
    yield world
    scenario.stop_workers()
    if world.module is not None:
        world.module.app.close()
    world.drop()


