"""The claims admin with Django's test client: the changelist, its filters and
search, read-only fields, and the fenced release action against a live lease
and an expired one."""

from __future__ import annotations

from typing import Any

from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import User
from django.db import connection
from django.test import TestCase
from django.urls import reverse

from celery_claim.django.admin import CONFIRM_FIELD, TOKEN_FIELD
from celery_claim.django.connector import claim_store

CHANGELIST = reverse("admin:celery_claim_claim_changelist")


def acquire(key: str, task: str = "shop.tasks.charge", lease: float = 60.0) -> int:
    won = claim_store().acquire(key, task_name=task, task_id=f"id-{key}", owner="w1@host/42",
                                payload_digest=None, lease_seconds=lease)
    assert won is not None
    return won.token


def lapse(key: str) -> None:
    """The holder died: its lease ended a minute ago."""
    with connection.cursor() as cursor:
        cursor.execute("UPDATE celery_claims SET lease_expires_at = now() - interval '1 minute' "
                       "WHERE key = %s", [key])


class ClaimsAdmin(TestCase):  # type: ignore[misc]
    def setUp(self) -> None:
        self.admin = User.objects.create_superuser("admin", "admin@example.com", "pw")
        self.client.force_login(self.admin)
        self.live_token = acquire("charge:1")
        self.stale_token = acquire("charge:2")
        lapse("charge:2")
        token = acquire("charge:3", task="shop.tasks.refund")
        assert claim_store().complete("charge:3", token, ttl_seconds=3600)

    def post_release(self, keys: list[str], **extra: Any) -> Any:
        # From the changelist ("index": which action form), or from the confirmation page.
        data = {"action": "release", ACTION_CHECKBOX_NAME: keys,
                **({} if extra else {"index": "0"}), **extra}
        return self.client.post(CHANGELIST, data, follow=True)

    def test_the_changelist_shows_every_column(self) -> None:
        page = self.client.get(CHANGELIST)
        assert page.status_code == 200
        text = page.content.decode()
        for header in ("Key", "State", "Task name", "Token", "Owner", "Attempt", "Lease left",
                       "Duplicates", "Finished at"):
            assert f">{header}<" in text or f">{header}</a>" in text, header
        assert "charge:1" in text
        assert "w1@host/42" in text
        assert "stale" in text  # charge:2's lease lapsed
        assert "59." in text or "60.0s" in text  # charge:1's lease, by the database's clock

    def test_filters_and_search(self) -> None:
        def keys(query: dict[str, str]) -> set[str]:
            page = self.client.get(CHANGELIST, query)
            return {c.key for c in page.context["cl"].result_list}

        assert keys({"state__exact": "running"}) == {"charge:1", "charge:2"}
        assert keys({"task_name__exact": "shop.tasks.refund"}) == {"charge:3"}
        assert keys({"stale": "yes"}) == {"charge:2"}
        assert keys({"stale": "no"}) == {"charge:1", "charge:3"}
        assert keys({"q": "charge:3"}) == {"charge:3"}
        assert keys({"q": "id-charge:1"}) == {"charge:1"}  # by task id

    def test_every_field_is_read_only(self) -> None:
        url = reverse("admin:celery_claim_claim_change", args=["charge:1"])
        page = self.client.get(url)
        assert page.status_code == 200
        assert 'name="_save"' not in page.content.decode()
        assert self.client.post(url, {"state": "released"}).status_code == 403
        assert self.client.get(reverse("admin:celery_claim_claim_add")).status_code == 403
        assert claim_store().get("charge:1").state == "running"  # type: ignore[union-attr]

    def test_an_expired_lease_is_released_at_once(self) -> None:
        page = self.post_release(["charge:2"])
        assert "Released 1 claim(s): charge:2" in page.content.decode()
        record = claim_store().get("charge:2")
        assert record is not None
        assert (record.state, record.token) == ("released", self.stale_token)
        assert record.error == "released by admin in the admin"

    def test_a_live_lease_is_refused_until_the_admin_confirms(self) -> None:
        page = self.post_release(["charge:1"])
        text = page.content.decode()
        assert "running under a live lease" in text
        assert "Yes, release them" in text
        assert claim_store().get("charge:1").state == "running"  # type: ignore[union-attr]

        page = self.post_release(["charge:1"], **{CONFIRM_FIELD: "yes",
                                                  TOKEN_FIELD: [str(self.live_token)]})
        assert "Released 1 claim(s): charge:1" in page.content.decode()
        assert claim_store().get("charge:1").state == "released"  # type: ignore[union-attr]

    def test_a_confirmation_for_a_claim_taken_over_meanwhile_is_refused(self) -> None:
        self.post_release(["charge:1"])  # the confirmation page shows the live token
        claim_store().force_release("charge:1", self.live_token, force=True)
        acquire("charge:1")  # another worker takes it: token + 1
        page = self.post_release(["charge:1"], **{CONFIRM_FIELD: "yes",
                                                  TOKEN_FIELD: [str(self.live_token)]})
        assert "it was taken over: look again" in page.content.decode()
        record = claim_store().get("charge:1")
        assert record is not None
        assert (record.state, record.token) == ("running", self.live_token + 1)

    def test_staff_without_the_change_permission_cannot_release(self) -> None:
        viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
        from django.contrib.auth.models import Permission

        viewer.user_permissions.add(Permission.objects.get(codename="view_claim"))
        self.client.force_login(viewer)
        page = self.client.get(CHANGELIST)
        assert page.status_code == 200
        assert 'value="release"' not in page.content.decode()
        self.post_release(["charge:2"])
        assert claim_store().get("charge:2").state == "running"  # type: ignore[union-attr]
