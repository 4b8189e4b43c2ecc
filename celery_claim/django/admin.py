"""The claims in Django's admin: read-only, with a fenced release.

Every field is read-only: a claim changes only through the claim store's
fenced statements. The "release" action follows the command line's rules
(:meth:`celery_claim.ClaimStore.force_release`): a claim is released only if
it still has the token the admin saw, and a live lease (the holder may still
be working) is released only after the admin confirms it on a second page.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.db.models.functions import Now
from django.http import HttpRequest
from django.template.response import TemplateResponse

from celery_claim import sql
from celery_claim.django import conf
from celery_claim.django.models import Claim

__all__ = ["ClaimAdmin"]

#: The hidden field of the confirmation page that says the admin confirmed.
CONFIRM_FIELD = "release_live_leases"
#: The tokens shown on the confirmation page, one per selected key, in order.
TOKEN_FIELD = "seen_token"


def _lease_remaining(claim: Any) -> float | None:
    """Seconds left on a running claim's lease by the database's clock (<= 0: lapsed)."""
    if claim.state != sql.RUNNING or claim.lease_expires_at is None:
        return None
    return float((claim.lease_expires_at - claim.db_now).total_seconds())


class StaleFilter(admin.SimpleListFilter):  # type: ignore[misc]
    """Running claims whose lease has lapsed: the holder died or is paused."""

    title = "stale lease"
    parameter_name = "stale"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "stale (running, lease lapsed)"), ("no", "not stale")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        stale = Q(state=sql.RUNNING, lease_expires_at__lt=Now())
        if self.value() == "yes":
            return queryset.filter(stale)
        if self.value() == "no":
            return queryset.exclude(stale)
        return queryset


@admin.register(Claim)
class ClaimAdmin(admin.ModelAdmin):  # type: ignore[misc]
    list_display = ("key", "state", "task_name", "token", "owner", "attempt",
                    "lease_remaining", "duplicates", "finished_at")
    list_filter = ("state", "task_name", StaleFilter)
    search_fields = ("key", "task_id")
    actions = ["release"]
    list_per_page = 50

    # --- read-only ---------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        # The claim's own database, and its clock for the lease columns.
        return super().get_queryset(request).using(conf.database_alias()).annotate(db_now=Now())

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [field.name for field in Claim._meta.concrete_fields]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_release_permission(self, request: HttpRequest) -> bool:
        """Releasing needs the model's change permission (superusers have it)."""
        return bool(request.user.has_perm(f"{Claim._meta.app_label}.change_claim"))

    @admin.display(description="lease left")  # type: ignore[untyped-decorator]
    def lease_remaining(self, claim: Any) -> str:
        remaining = _lease_remaining(claim)
        if remaining is None:
            return "-"
        return f"{remaining:.1f}s" if remaining > 0 else "stale"

    # --- the release action -----------------------------------------------------------

    @admin.action(description="Release selected claims (fenced by token)",  # type: ignore[untyped-decorator]
                  permissions=["release"])
    def release(self, request: HttpRequest, queryset: QuerySet[Any]) -> TemplateResponse | None:
        from celery_claim.django.connector import claim_store

        store = claim_store()
        confirmed = request.POST.get(CONFIRM_FIELD) == "yes"
        seen: dict[str, int] = {}
        if confirmed:
            keys = request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME)
            seen = dict(zip(keys, map(int, request.POST.getlist(TOKEN_FIELD)),
                                strict=False))
        released, live = [], []
        for claim in queryset:
            token = seen.get(claim.key, claim.token)
            remaining = _lease_remaining(claim)
            if not confirmed and remaining is not None and remaining > 0:
                live.append((claim, remaining))
                continue
            if store.force_release(claim.key, token, force=confirmed,
                                   reason=f"released by {request.user} in the admin"):
                released.append(f"{claim.key} (token {token}, was {claim.state})")
                continue
            self._refused(request, store, claim.key, token)
        if released:
            self.message_user(request, f"released {len(released)} claim(s): "
                              + ", ".join(released), messages.SUCCESS)
        if not live:
            return None
        return TemplateResponse(request, "celery_claim/admin/release_confirmation.html", {
            **self.admin_site.each_context(request),
            "title": "Release claims under a live lease?",
            "opts": self.model._meta,
            "live": [{"claim": c, "remaining": f"{r:.1f}"} for c, r in live],
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            "confirm_field": CONFIRM_FIELD,
            "token_field": TOKEN_FIELD,
        })

    def _refused(self, request: HttpRequest, store: Any, key: str, token: int) -> None:
        after = store.get(key)
        if after is None:
            text = f"claim {key!r} was purged meanwhile"
        elif after.token != token:
            text = (f"refused: claim {key!r} has token {after.token}, not {token}; "
                    "it was taken over: look again")
        else:
            text = (f"refused: claim {key!r} is running under a live lease "
                    f"({after.lease_remaining:.1f}s left, owner {after.owner})")
        self.message_user(request, text, messages.WARNING)
