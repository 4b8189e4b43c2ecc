"""manage.py celery_claim: the CLI's subcommands, exit codes and output, on Django's settings."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import TestCase

from celery_claim import cli
from celery_claim.django.connector import claim_store
from celery_claim.django.management.commands.celery_claim import Command


def run(*args: str) -> tuple[int, str, str]:
    """``manage.py celery_claim ARGS``: exit code, standard output, standard error."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            Command().run_from_argv(["manage.py", "celery_claim", *args])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


class ManageCeleryClaim(TestCase):  # type: ignore[misc]
    def setUp(self) -> None:
        won = claim_store().acquire("charge:1", task_name="shop.tasks.charge", task_id="t1",
                                    owner="w1/1", payload_digest=None, lease_seconds=60)
        assert won is not None
        self.token = won.token

    def test_status_and_list(self) -> None:
        code, out, _ = run("status", "charge:1", "--json")
        assert code == 0
        assert json.loads(out)["state"] == "running"
        code, out, _ = run("list", "--json")
        assert [c["key"] for c in json.loads(out)["claims"]] == ["charge:1"]
        code, _, err = run("status", "charge:404")
        assert code == cli.EXIT_NOT_FOUND
        assert "no claim with key 'charge:404'" in err

    def test_release_refuses_a_live_lease_unless_forced(self) -> None:
        code, _, err = run("release", "charge:1")
        assert code == cli.EXIT_REFUSED
        assert "live lease" in err
        code, out, _ = run("release", "charge:1", "--force")
        assert code == 0
        assert "released charge:1" in out
        assert claim_store().get("charge:1").state == "released"  # type: ignore[union-attr]

    def test_stats_purge_and_usage(self) -> None:
        code, out, _ = run("stats", "--json")
        assert code == 0
        assert json.loads(out)["totals"]["claims"] == 1
        code, out, _ = run("purge", "--json")
        assert (code, json.loads(out)["deleted"]) == (0, 0)
        code, _, _ = run("bogus")
        assert code == 2
        code, _, _ = run("schema")  # migrations own the table: not a subcommand here
        assert code == 2

    def test_call_command_reports_the_exit_code(self) -> None:
        with pytest.raises(CommandError) as raised:
            call_command("celery_claim", "release", "charge:1")
        assert raised.value.returncode == cli.EXIT_REFUSED
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            call_command("celery_claim", "status", "charge:1", "--json")
        assert json.loads(out.getvalue())["token"] == self.token
