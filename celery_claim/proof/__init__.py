"""The proof harness: what ``celery-claim demo`` and ``celery-claim soak`` share.

Both run one job written two ways (a naive check-then-act task and a
:class:`~celery_claim.ClaimTask`) on real ``celery worker`` processes,
publish every job several times, and count the effects per job in the
database. The demo is the short run without kills, on an embedded default
or on PostgreSQL and Redis; the soak is the long one, on PostgreSQL and
Redis, with pool processes and workers SIGKILLed as it goes.

* :mod:`~celery_claim.proof.config`: where one run lives (its name, tables,
  queue, Redis keys, the environment its workers read) and the Celery
  settings both apps share. Workers import it; it imports no test tooling.
* :mod:`~celery_claim.proof.harness`: one run's resources in the parent
  process (store, tables, Redis keys, worker processes, the killer), each
  removed when the run ends, also on Ctrl-C and SIGTERM; the effects count.
* :mod:`~celery_claim.proof.display`: the results table, the progress bars
  and what a side's results have in common (throughput, JSON).

:mod:`celery_claim.demo` and :mod:`celery_claim.soak` keep what is theirs:
their options, what they publish, how they count, and their report's words.
"""
