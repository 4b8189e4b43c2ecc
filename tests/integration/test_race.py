"""Many processes race for the same keys: exactly one winner per acquisition.
Then the same with four threads per process, whose claims are coalesced.

Three races, each run many times behind a barrier: for a released key, for a
key nobody has seen (the INSERT) and for a key whose holder's lease lapsed
(the takeover). The winners are checked against the database: each key's
token and attempt count the acquisitions that really happened, and its
holder is the racer that won. Each racer claims as a task does (the
store's ``claim``, then ``lost_to`` where the statement missed a row newer
than its snapshot): every racer that lost must have been told so, with the
token of the row it lost to, and counted once as a duplicate. The naive
check-then-act guard runs through the same harness and must show double
winners in the database too, or the harness could not see the race at all.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
from collections import Counter, defaultdict

import pytest
import racers
import sqlalchemy as sa

from celery_claim import ClaimStore

RACERS = 8
ROUNDS = 200
KEYS = 40

Wins = dict[int, list[tuple[int, int]]]


def seed(store: ClaimStore, mode: str) -> None:
    """Released keys, or keys held by a holder whose lease has lapsed (none for fresh)."""
    if mode == "fresh":
        return
    count = KEYS if mode == "released" else ROUNDS
    for n in range(count):
        key = racers.key_of(mode, n, KEYS)
        won = store.acquire(key, task_name="race", task_id="seed", owner="seed",
                            payload_digest=None, lease_seconds=60)
        assert won is not None
        if mode == "released":
            assert store.release(key, won.token, ttl_seconds=60)
    if mode == "lapsed":
        with store.engine.begin() as conn:  # the holder stopped renewing a while ago
            conn.execute(sa.update(store.table)
                         .values(lease_expires_at=sa.func.now() - sa.text("interval '1 second'")))


def run_race(url: str, store: ClaimStore, mode: str, naive: bool,
             threads: int = 0, lost: list[tuple[int, int]] | None = None) -> Wins:
    """``RACERS`` processes racing; with ``threads``, each process races that
    many threads through one coalescing store (``RACERS * threads`` racers).
    Every delivery that lost adds ``(round, token)`` to ``lost``: the token
    of the row it was told it lost to."""
    seed(store, mode)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(RACERS * (threads or 1), timeout=60)
    results = ctx.Queue()
    if threads:
        procs = [ctx.Process(target=racers.race_threads, args=(
            url, store.table_name, mode, naive, ROUNDS, KEYS, barrier, results, n, threads))
            for n in range(RACERS)]
    else:
        procs = [ctx.Process(target=racers.race, args=(
            url, store.table_name, mode, naive, ROUNDS, KEYS, barrier, results, n))
            for n in range(RACERS)]
    for proc in procs:
        proc.start()
    wins: Wins = {}
    batched = 0
    try:
        # Each racer's wins, and its losses unless naive; each process's batches.
        racers_count = RACERS * (threads or 1)
        reports = racers_count * (1 if naive else 2) + (RACERS if threads else 0)
        for _ in range(reports):
            racer, racer_wins, error = results.get(timeout=240)
            assert error is None, f"racer {racer} failed: {error}"
            if racer == "batched":
                batched += racer_wins
            elif racer == "lost":
                if lost is not None:
                    lost.extend(racer_wins)
            else:
                wins[racer] = racer_wins
    except queue_module.Empty:
        pytest.fail("racers did not finish")
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    if threads and not naive:
        print(f"{batched} of {ROUNDS * RACERS} claims were sent in batches")
        assert batched > 0, "no claims were coalesced: the race did not test batches"
    return wins


def winners_per_round(wins: Wins) -> Counter[int]:
    return Counter(round_ for racer_wins in wins.values() for round_, _ in racer_wins)


def rows(store: ClaimStore) -> dict[str, sa.Row[tuple[int, int, str, int]]]:
    t = store.table
    with store.engine.connect() as conn:
        found = conn.execute(sa.select(t.c.key, t.c.token, t.c.attempt, t.c.task_id,
                                       t.c.duplicates))
        return {row.key: row for row in found}


def acquisitions_beyond_one(store: ClaimStore, mode: str) -> int:
    """Acquisitions the database counts beyond the one each round should have."""
    found = rows(store)
    if mode == "released":  # the seed's acquisition, then one per round
        expected = Counter(racers.key_of(mode, n, KEYS) for n in range(ROUNDS))
        return sum(found[key].attempt - 1 - n for key, n in expected.items())
    base = 0 if mode == "fresh" else 1  # the lapsed holder's acquisition
    return sum(found[racers.key_of(mode, n, KEYS)].attempt - base - 1 for n in range(ROUNDS))


@pytest.mark.connections(35)  # eight processes of four threads at most
@pytest.mark.parametrize("threads", [0, 4], ids=["processes", "coalesced"])
@pytest.mark.parametrize("mode", racers.MODES)
def test_exactly_one_winner_per_key_and_acquisition(database_url: str, pg_store: ClaimStore,
                                                    mode: str, threads: int) -> None:
    lost: list[tuple[int, int]] = []
    wins = run_race(database_url, pg_store, mode, naive=False, threads=threads, lost=lost)
    per_round = winners_per_round(wins)
    assert sorted(per_round) == list(range(ROUNDS)), "a round had no winner"
    assert set(per_round.values()) == {1}, "a round had more than one winner"
    # Every other racer of a round lost, to the row the winner wrote, and was
    # counted once (coalesced: its process's batch, or the second statement).
    won_token = {round_: token for racer_wins in wins.values() for round_, token in racer_wins}
    assert len(lost) == ROUNDS * (RACERS - 1)
    assert all(token == won_token[round_] for round_, token in lost), [
        (round_, token, won_token[round_]) for round_, token in lost
        if token != won_token[round_]][:5]
    assert sum(row.duplicates for row in rows(pg_store).values()) == len(lost)

    # The database agrees: one acquisition per round, made by the racer that won it.
    found = rows(pg_store)
    assert acquisitions_beyond_one(pg_store, mode) == 0
    winner = {round_: racer for racer, racer_wins in wins.items() for round_, _ in racer_wins}
    tokens: dict[str, list[int]] = defaultdict(list)
    for round_ in range(ROUNDS):
        key = racers.key_of(mode, round_, KEYS)
        tokens[key].append(dict(wins[winner[round_]])[round_])
    for key, seen in tokens.items():
        row = found[key]
        first = 1 if mode == "fresh" else 2  # a seeded key was acquired once before
        assert seen == list(range(first, first + len(seen))), key
        assert (row.token, row.attempt) == (seen[-1], seen[-1]), (key, row)
        if mode != "released":
            assert row.task_id == f"r{winner[int(key.rsplit('-', 1)[1])]}", (key, row)


@pytest.mark.control
@pytest.mark.connections(35)
@pytest.mark.parametrize("threads", [0, 4], ids=["processes", "threads"])
@pytest.mark.parametrize("mode", racers.MODES)
def test_control_naive_check_then_act_has_double_winners(database_url: str,
                                                         pg_store: ClaimStore,
                                                         mode: str, threads: int) -> None:
    wins = run_race(database_url, pg_store, mode, naive=True, threads=threads)
    per_round = winners_per_round(wins)
    doubled = sum(1 for count in per_round.values() if count > 1)
    extra = acquisitions_beyond_one(pg_store, mode)
    print(f"naive guard, {mode} keys: {doubled} of {ROUNDS} rounds had more than one winner; "
          f"the database counts {extra} acquisitions too many")
    assert doubled > 0, "the harness did not see the race: it proves nothing"
    assert extra > 0, "the database shows no double acquisition"
