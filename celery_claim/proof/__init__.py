"""The proof harness: what ``celery-claim demo`` and ``celery-claim soak`` share.

Both are one run loop: one job written two ways (a naive check-then-act task
and a :class:`~celery_claim.ClaimTask`) on real ``celery worker`` processes,
every job published several times, and the effects per job counted in the
database. The demo is the short run without kills, on an embedded default
or on PostgreSQL and Redis; the soak is the long one, on PostgreSQL and
Redis, with pool processes and workers SIGKILLed as it goes.

* :mod:`~celery_claim.proof.run`: the run loop (options, publishing,
  draining, the report) and its presets' knobs.
* :mod:`~celery_claim.proof.config`: where one run lives (its name, tables,
  queue, Redis keys, its timings, the environment its workers read) and the
  Celery settings. Workers import it; it imports no test tooling.
* :mod:`~celery_claim.proof.app`: the workers' app, its two tasks and the
  signal receivers that count.
* :mod:`~celery_claim.proof.counting`: the effects, flags and log tables in
  the claim database, the workers' recorder and the parent's tally.
* :mod:`~celery_claim.proof.harness`: one run's resources in the parent
  process (store, tables, Redis keys, worker processes, the killer), each
  removed when the run ends, also on Ctrl-C and SIGTERM.
* :mod:`~celery_claim.proof.display`: the results table, the progress bars
  and what a side's results have in common (throughput, JSON).

:mod:`celery_claim.demo` and :mod:`celery_claim.soak` keep what is theirs:
their options and presets, and their report's words.
"""
