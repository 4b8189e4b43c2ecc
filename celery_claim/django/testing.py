"""Testing claimed tasks in a Django project's own test suite.

``django.test.TestCase`` wraps every test in a transaction. Claimed tasks
run eagerly inside it work as in a worker: the acquire and the completion
run in the test's transaction, and ``self.claim.atomic()`` becomes a
savepoint (it is never ``durable``). :func:`eager_claims` sets up what that
needs, for a test, a class of tests or a block::

    from celery_claim.django.testing import EagerClaims

    class ChargeTests(EagerClaims, TestCase):
        def test_a_duplicate_charges_once(self):
            charge.delay(7, 100)
            charge.delay(7, 100)
            self.assertEqual(Charge.objects.filter(order_id=7).count(), 1)

Inside ``TestCase`` the test's transaction is rolled back at the end, so
``transaction.on_commit`` callbacks do not run by themselves: wrap the call
in ``self.captureOnCommitCallbacks(execute=True)`` to run them when the
claim's block is released, as a worker would after its commit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["EagerClaims", "eager_claims"]

_SETTINGS = {
    "task_always_eager": True,
    "task_eager_propagates": True,
    # Another thread's connection cannot see the test's uncommitted claims:
    # a renewal from the heartbeat thread would find them gone.
    "claim_heartbeat": False,
}


def _forget_resolved_settings(app: Any) -> None:
    # A ClaimTask resolves its settings once; make it read them again.
    from celery_claim.task import ClaimTask

    for task in list(app.tasks.values()):
        if isinstance(task, ClaimTask):
            task.__dict__.pop("_claim_rt", None)


@contextlib.contextmanager
def eager_claims(app: Any = None) -> Iterator[Any]:
    """Run ``app``'s tasks eagerly (``.delay()`` included) with claims, then restore.

    ``app`` defaults to Celery's current app (the project's); it is the current
    app while the block runs. Yields the app.
    """
    from celery import current_app

    previous = current_app._get_current_object()
    if app is None:
        app = previous
    saved = {name: app.conf.get(name) for name in _SETTINGS}
    app.conf.update(_SETTINGS)
    _forget_resolved_settings(app)
    app.set_current()  # shared_task proxies (.delay() of a @shared_task) resolve to it
    try:
        yield app
    finally:
        previous.set_current()
        app.conf.update(saved)
        _forget_resolved_settings(app)


class EagerClaims:
    """A mixin for ``django.test.TestCase``: every test runs with :func:`eager_claims`.

    Set ``celery_app`` on the class to use an app other than the current one.
    """

    celery_app: Any = None

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        context = eager_claims(self.celery_app)
        context.__enter__()
        self.addCleanup(context.__exit__, None, None, None)  # type: ignore[attr-defined]
