from __future__ import annotations

import datetime
from unittest.mock import Mock

import celery
import pytest
from celery import Celery
from celery.contrib.testing.mocks import TaskMessage
from kombu.utils.imports import symbol_by_name

from celery_claim import ClaimConfigurationError, ClaimTask
from celery_claim.settings import OPTIONS, from_sources

URL = "sqlite:///x.db"


def test_defaults() -> None:
    s = from_sources({}, {"claim_database_url": URL}, environ={})
    assert (s.table, s.lease_seconds, s.on_running, s.on_failure) == (
        "celery_claims", 60.0, "defer", "retry")
    assert all((s.heartbeat, s.store_result, s.check_payload, s.create_schema, s.enabled))
    assert s.ttl_seconds == 7 * 24 * 3600


def test_precedence_task_over_app_over_environment() -> None:
    env = {"CELERY_CLAIM_LEASE_SECONDS": "30", "CELERY_CLAIM_DATABASE_URL": URL,
           "CELERY_CLAIM_TABLE": "env_t"}
    s = from_sources({"claim_lease_seconds": 10}, {"claim_lease_seconds": 20}, environ=env)
    assert s.lease_seconds == 10
    s = from_sources({}, {"claim_lease_seconds": 20}, environ=env)
    assert (s.lease_seconds, s.table, s.database_url) == (20, "env_t", URL)
    assert from_sources({}, {}, environ=env).lease_seconds == 30


def test_unknown_app_key_has_a_suggestion() -> None:
    with pytest.raises(ClaimConfigurationError, match="did you mean 'claim_lease_seconds'"):
        from_sources({}, {"claim_database_url": URL, "claim_lease_second": 5}, environ={})


def test_unknown_environment_variable_is_logged_with_a_suggestion(
        caplog: pytest.LogCaptureFixture) -> None:
    env = {"CELERY_CLAIM_ON_RUNING": "x", "CELERY_CLAIM_TEST_DATABASE_URL": "y"}
    from_sources({}, {"claim_database_url": URL}, environ=env)
    assert "did you mean CELERY_CLAIM_ON_RUNNING?" in caplog.text
    assert "TEST_DATABASE_URL" not in caplog.text


@pytest.mark.parametrize(("name", "value", "message"), [
    ("claim_lease_seconds", 0, "at least 1"),
    ("claim_lease_seconds", "soon", "number of seconds"),
    ("claim_on_running", "deffer", "did you mean 'defer'"),
    ("claim_on_failure", "retrying", "must be one of"),
    ("claim_table", "claims; drop table x", "plain identifier"),
    ("claim_table", "a.b.c", "plain identifier"),
    ("claim_heartbeat", "maybe", "boolean"),
    ("claim_database_url", "postgres", "SQLAlchemy URL"),
])
def test_bad_values_are_clear_errors(name: str, value: object, message: str) -> None:
    with pytest.raises(ClaimConfigurationError, match=message):
        from_sources({}, {"claim_database_url": URL, name: value}, environ={})


def test_timedelta_and_schema_table_accepted() -> None:
    s = from_sources({}, {"claim_database_url": URL, "claim_ttl_seconds": datetime.timedelta(
        hours=1), "claim_table": "ops.claims"}, environ={})
    assert (s.ttl_seconds, s.table) == (3600.0, "ops.claims")


def test_missing_store_is_a_clear_error() -> None:
    with pytest.raises(ClaimConfigurationError, match="claim_database_url"):
        from_sources({}, {}, environ={})


def test_every_option_is_documented_in_the_task_class() -> None:
    assert all(hasattr(ClaimTask, name) for name in OPTIONS)


def test_unknown_task_option_fails_at_declaration() -> None:
    app = Celery(set_as_current=False)
    with pytest.raises(ClaimConfigurationError, match="did you mean 'claim_lease_seconds'"):
        @app.task(base=ClaimTask, claim_lease_secs=5, shared=False)
        def job() -> None: ...
        app.finalize()
        _ = app.tasks[job.name]


def test_bad_task_option_value_fails_at_declaration() -> None:
    app = Celery(set_as_current=False)
    with pytest.raises(ClaimConfigurationError, match="must be one of"):
        @app.task(base=ClaimTask, claim_on_running="wait", shared=False)
        def job() -> None: ...
        _ = job.name


def test_key_template_checked_against_task_signature_at_declaration() -> None:
    app = Celery(set_as_current=False)
    with pytest.raises(ClaimConfigurationError, match="not an argument of the task"):
        @app.task(base=ClaimTask, bind=True, claim_key="c:{order}", shared=False)
        def job(self: ClaimTask, order_id: int) -> None: ...
        _ = job.name


def test_django_namespace_maps_to_claim_settings() -> None:
    class DjangoSettings:
        CELERY_CLAIM_DATABASE_URL = URL
        CELERY_CLAIM_LEASE_SECONDS = 12

    app = Celery(set_as_current=False)
    app.config_from_object(DjangoSettings, namespace="CELERY")

    @app.task(base=ClaimTask, shared=False)
    def job() -> None: ...

    resolved = app.tasks[job.name].claim_settings
    assert (resolved.database_url, resolved.lease_seconds) == (URL, 12)


def test_app_wide_task_cls() -> None:
    app = Celery(set_as_current=False, task_cls="celery_claim:ClaimTask")
    app.conf.claim_database_url = URL

    @app.task(shared=False)
    def job() -> None: ...

    assert isinstance(app.tasks[job.name], ClaimTask)
    assert app.tasks[job.name].acks_late is True
    assert app.tasks[job.name].reject_on_worker_lost is True


def test_a_hard_time_limit_requeues_on_every_supported_celery() -> None:
    # Celery 5.7 split acks_on_failure_or_timeout in two; before it, the one
    # switch covers both, and acknowledging a timed-out body drops its job.
    app = Celery(set_as_current=False)
    app.conf.claim_database_url = URL

    @app.task(base=ClaimTask, shared=False)
    def job() -> None: ...

    task = app.tasks[job.name]
    if hasattr(celery.Task, "acks_on_timeout"):
        assert task.acks_on_timeout is False
        assert task.acks_on_failure is not False  # a failed body's message is still acked
    else:
        assert task.acks_on_failure_or_timeout is False


@pytest.mark.parametrize("soft", [False, True])
def test_a_hard_time_limit_seen_only_by_on_timeout_requeues(soft: bool) -> None:
    # The gevent pool reports a hard time limit to Request.on_timeout and
    # never calls on_failure: the requeue must happen there.
    app = Celery(set_as_current=False)
    app.conf.claim_database_url = URL

    @app.task(base=ClaimTask, shared=False)
    def job() -> None: ...

    task = app.tasks[job.name]
    on_ack, on_reject = Mock(), Mock()
    request = symbol_by_name(task.Request)(TaskMessage(task.name), app=app, task=task,
                                           on_ack=on_ack, on_reject=on_reject)
    request.on_timeout(soft=soft, timeout=3)

    on_ack.assert_not_called()
    if soft:  # a soft limit raises in the body; nothing is decided here
        on_reject.assert_not_called()
    else:
        on_reject.assert_called_once()
        assert on_reject.call_args.args[-1] is True  # requeue


def test_claim_on_failure_release_is_a_deprecated_spelling_of_retry() -> None:
    with pytest.warns(DeprecationWarning, match="now spelled 'retry'"):
        s = from_sources({"claim_on_failure": "release"}, {"claim_database_url": URL},
                         environ={})
    assert s.on_failure == "retry"
    kept = from_sources({"claim_on_failure": "keep"}, {"claim_database_url": URL}, environ={})
    assert kept.on_failure == "keep"
    with pytest.raises(ClaimConfigurationError, match="'retry', 'keep'"):
        from_sources({"claim_on_failure": "relase"}, {"claim_database_url": URL}, environ={})


def test_a_django_database_without_the_django_app_says_what_to_do(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from celery_claim import task

    monkeypatch.setattr(task, "_django_stores", None)
    with pytest.raises(ClaimConfigurationError,
                       match=r"'celery_claim\.django' to INSTALLED_APPS") as raised:
        task.django_store("default", "celery_claims")
    assert raised.value.context["claim_django_database"] == "default"


def test_an_engine_in_the_configuration_wins_over_the_environment_url() -> None:
    import sqlalchemy as sa

    engine = sa.create_engine("sqlite://")
    resolved = from_sources({}, {"claim_engine": engine},
                            environ={"CELERY_CLAIM_DATABASE_URL": "sqlite:///elsewhere.db"})
    assert resolved.engine is engine
    assert resolved.database_url is None


def test_an_engine_and_a_url_both_configured_is_an_error_that_names_both() -> None:
    import sqlalchemy as sa

    with pytest.raises(ClaimConfigurationError, match="claim_engine and claim_database_url"):
        from_sources({}, {"claim_engine": sa.create_engine("sqlite://"),
                          "claim_database_url": "sqlite:///other.db"}, environ={})
