"""Retries: the claim is released before the next attempt is published."""

from __future__ import annotations

from celery import Celery

from celery_claim import ClaimTask

app = Celery("retries")
app.conf.claim_database_url = "sqlite:///claims.db"


class ProviderUnavailable(Exception):
    """The payment provider answered 503."""


attempts: list[tuple[int, int]] = []  # (retries, token) of each attempt, for the tests


@app.task(base=ClaimTask, bind=True, claim_key="charge:{order_id}",
          autoretry_for=(ProviderUnavailable,), retry_backoff=True, max_retries=3)
def charge(self: ClaimTask, order_id: int, fail_times: int = 0) -> str:
    attempts.append((self.request.retries, self.claim.token))
    if self.request.retries < fail_times:
        raise ProviderUnavailable(order_id)
    return "charged"


@app.task(base=ClaimTask, bind=True, claim_key="refund:{order_id}", max_retries=5)
def refund(self: ClaimTask, order_id: int, fail_times: int = 0) -> str:
    if self.request.retries < fail_times:
        # self.retry() releases this claim (fenced by its token), then publishes
        # the next attempt, which acquires the claim again with token + 1.
        raise self.retry(countdown=2 ** self.request.retries)
    return "refunded"
