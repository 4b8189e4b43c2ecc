"""Many processes race for the same keys: exactly one winner per acquisition.

The naive check-then-act guard runs through the same harness and must show
double winners, or the harness could not see the race at all.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
from collections import Counter, defaultdict

import pytest
import racers

from celery_claim import ClaimStore

RACERS = 8
ROUNDS = 600
KEYS = 40


def run_race(url: str, store: ClaimStore, naive: bool) -> dict[int, list[tuple[int, int]]]:
    # Every key starts released, so each round is a fresh race for it.
    for n in range(KEYS):
        won = store.acquire(f"key-{n}", task_name="race", task_id="seed", owner="seed",
                            payload_digest=None, lease_seconds=60)
        assert won is not None
        store.release(f"key-{n}", won.token, ttl_seconds=60)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(RACERS, timeout=60)
    results = ctx.Queue()
    procs = [ctx.Process(target=racers.race, args=(url, store.table_name, naive, ROUNDS, KEYS,
                                                   barrier, results, n)) for n in range(RACERS)]
    for proc in procs:
        proc.start()
    wins: dict[int, list[tuple[int, int]]] = {}
    try:
        for _ in procs:
            racer, racer_wins, error = results.get(timeout=240)
            assert error is None, f"racer {racer} failed: {error}"
            wins[racer] = racer_wins
    except queue_module.Empty:
        pytest.fail("racers did not finish")
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    return wins


def winners_per_round(wins: dict[int, list[tuple[int, int]]]) -> Counter[int]:
    return Counter(round_ for racer_wins in wins.values() for round_, _ in racer_wins)


def test_exactly_one_winner_per_key_and_acquisition(database_url: str,
                                                    pg_store: ClaimStore) -> None:
    wins = run_race(database_url, pg_store, naive=False)
    per_round = winners_per_round(wins)
    assert sorted(per_round) == list(range(ROUNDS)), "a round had no winner"
    assert set(per_round.values()) == {1}, "a round had more than one winner"
    # Fencing tokens: each acquisition of a key gets the next token.
    tokens: dict[str, list[int]] = defaultdict(list)
    for round_, token in sorted(w for racer_wins in wins.values() for w in racer_wins):
        tokens[f"key-{round_ % KEYS}"].append(token)
    for key, seen in tokens.items():
        assert seen == list(range(2, 2 + len(seen))), key
    assert len({r for racer_wins in wins.values() for r, _ in racer_wins}) == ROUNDS


def test_control_naive_check_then_act_has_double_winners(database_url: str,
                                                         pg_store: ClaimStore) -> None:
    wins = run_race(database_url, pg_store, naive=True)
    per_round = winners_per_round(wins)
    doubled = sum(1 for count in per_round.values() if count > 1)
    print(f"naive guard: {doubled} of {ROUNDS} rounds had more than one winner")
    assert doubled > 0, "the harness did not see the race: it proves nothing"
