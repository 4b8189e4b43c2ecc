"""On Django's connection a duplicate's statement skips its WAL flush only
when it is a transaction of its own, decided at the statement, after
connecting: autocommit, no atomic block, and no transaction the caller opened
on the driver's connection (a raw ``BEGIN``)."""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.test import TransactionTestCase

from celery_claim.django import connector as django_connector
from celery_claim.django.connector import claim_store

CLAIM = {"task_name": "t.dup", "task_id": "id-1", "owner": "w/1", "payload_digest": "d" * 64,
         "lease_seconds": 30.0, "retry_failed": False, "check_payload": True}


class DuplicateCommitOnDjangosConnection(TransactionTestCase):  # type: ignore[misc]
    def setUp(self) -> None:
        self.store = claim_store()
        self.key = f"dup:{self.id()}"
        won = self.store.acquire(self.key, **CLAIM)
        assert won is not None
        assert self.store.complete(self.key, won.token, result=1, has_result=True,
                                   ttl_seconds=600.0)
        self.sent: list[Any] = []
        real = django_connector._run

        def spy(conn: Any, driver: Any, statement: Any, params: dict[str, Any]) -> Any:
            self.sent.append(params.get("own_transaction"))
            return real(conn, driver, statement, params)

        django_connector._run = spy  # type: ignore[assignment]
        self.addCleanup(setattr, django_connector, "_run", real)

    def duplicate(self) -> Any:
        self.sent.clear()
        lost = self.store.claim(self.key, **CLAIM)
        assert lost.record.state == "succeeded"  # type: ignore[union-attr]
        return self.sent[-1]

    def setting(self) -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            return str(cursor.fetchone()[0])

    def synchronous(self) -> str:
        """``on`` for the caller's transaction, whatever the server's default."""
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = on")
        return self.setting()

    def test_in_autocommit_even_on_a_connection_not_yet_opened(self) -> None:
        connection.close()
        assert self.duplicate() is True  # decided after connecting
        assert self.duplicate() is True

    def test_inside_atomic_it_is_the_callers_transaction(self) -> None:
        with transaction.atomic():
            before = self.synchronous()
            assert self.duplicate() is False
            assert self.setting() == before

    def test_after_a_raw_begin_it_is_the_callers_transaction(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute("BEGIN")
            before = self.synchronous()
            try:
                assert self.duplicate() is False
                assert self.setting() == before
            finally:
                cursor.execute("ROLLBACK")

    def test_with_autocommit_off_it_is_the_callers_transaction(self) -> None:
        transaction.set_autocommit(False)
        try:
            before = self.synchronous()
            assert self.duplicate() is False
            assert self.setting() == before
        finally:
            transaction.rollback()
            transaction.set_autocommit(True)

    def test_the_count_is_kept_in_every_case(self) -> None:
        self.duplicate()
        with transaction.atomic():
            self.duplicate()
        assert self.store.get(self.key).duplicates == 2  # type: ignore[union-attr]
