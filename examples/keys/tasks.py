"""Claim keys: a template over the arguments, a callable, and the payload check."""

from __future__ import annotations

import hashlib
import json

from celery import Celery

from celery_claim import ClaimTask

app = Celery("keys")
app.conf.claim_database_url = "sqlite:///claims.db"


# A template names the job by its business identity. Arguments are bound to
# the signature first, so charge(7, 100) and charge(order_id=7, amount_cents=100)
# get the same key: "charge:7".
@app.task(base=ClaimTask, bind=True, claim_key="charge:{order_id}")
def charge(self: ClaimTask, order_id: int, amount_cents: int) -> int:
    return amount_cents


# Several arguments, with the task's own name: "sync:crm:42".
@app.task(base=ClaimTask, bind=True, claim_key="sync:{system}:{customer_id}")
def sync_customer(self: ClaimTask, system: str, customer_id: int) -> str:
    return f"{system}/{customer_id}"


def report_key(account_id: int, filters: dict[str, str]) -> str:
    """Values with no stable text form (a dict) go through a callable: hash them."""
    digest = hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]
    return f"report:{account_id}:{digest}"


@app.task(base=ClaimTask, bind=True, claim_key=report_key)
def build_report(self: ClaimTask, account_id: int, filters: dict[str, str]) -> str:
    return self.claim.key


# The payload check is on by default: charge(7, 100) then charge(7, 999) is a
# bug in the caller, and the second raises ClaimPayloadMismatch. Turn it off
# for a task whose key deliberately ignores some arguments.
@app.task(base=ClaimTask, bind=True, claim_key="notify:{user_id}",
          claim_check_payload=False)
def notify(self: ClaimTask, user_id: int, message: str) -> str:
    return message
