"""Effects outside the database: hand the provider an idempotency key."""

from __future__ import annotations

from celery import Celery

from celery_claim import ClaimTask

app = Celery("external")
app.conf.claim_database_url = "sqlite:///claims.db"


class EmailClient:
    """A stand-in for an HTTP API that de-duplicates on an idempotency key."""

    def __init__(self) -> None:
        self.sent: dict[str, str] = {}

    def send(self, to: str, body: str, *, idempotency_key: str) -> str:
        # The provider keeps the first request for a key and ignores repeats.
        self.sent.setdefault(idempotency_key, to)
        return idempotency_key


email = EmailClient()


@app.task(base=ClaimTask, bind=True, claim_key="welcome:{user_id}")
def send_welcome(self: ClaimTask, user_id: int, address: str) -> str:
    # The key names the job; "key#token" names this acquisition. Use the key
    # when the provider must see one request whatever happens; a crashed
    # holder's successor then repeats the same request and the provider
    # de-duplicates it.
    return email.send(address, "Welcome!", idempotency_key=self.claim.key)
