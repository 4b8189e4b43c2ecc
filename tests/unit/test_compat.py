"""The Celery version shims, for each shape of ``Task`` the supported releases have."""

from __future__ import annotations

import celery
import pytest
from celery import Celery

from celery_claim import ClaimTask, compat


class Celery57Task:
    acks_late = False
    acks_on_failure = None
    acks_on_timeout = None


class Celery55Task:
    acks_late = False
    acks_on_failure_or_timeout = True


@pytest.mark.parametrize(("base", "switch", "request_class"), [
    (Celery57Task, "acks_on_timeout", None),
    (Celery55Task, "acks_on_failure_or_timeout", compat.REQUEST_BEFORE_5_7),
], ids=["5.7", "5.5-5.6"])
def test_acking_attributes_match_each_release(base: type, switch: str,
                                              request_class: str | None) -> None:
    attributes = compat.acking_attributes(base)
    assert compat.requeue_on_timeout_switch(base) == switch
    assert attributes[switch] is False
    assert attributes["acks_late"] is True
    assert attributes["reject_on_worker_lost"] is True
    assert attributes.get("Request") == request_class
    other = {"acks_on_timeout", "acks_on_failure_or_timeout"} - {switch}
    assert not other & set(attributes)


def test_claim_task_has_the_installed_releases_attributes() -> None:
    for name, value in compat.acking_attributes(celery.Task).items():
        assert getattr(ClaimTask, name) == value


def test_a_direct_call_is_celerys_own_call_with_the_task_current() -> None:
    app = Celery("compat_unit", set_as_current=False)
    app.conf.claim_database_url = "sqlite://"
    seen = []

    @app.task(base=ClaimTask, bind=True, shared=False)
    def job(self: ClaimTask, n: int) -> int:
        current = celery.current_task._get_current_object()
        seen.append((current is self, self.claim.claimed, self.request.args))
        return n

    assert job(3) == 3
    assert seen == [(True, False, (3,))]
    app.close()
