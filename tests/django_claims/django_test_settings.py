"""Django settings for the in-process Django tests: the example project's, with
PostgreSQL from CELERY_CLAIM_TEST_DATABASE_URL and test databases of their own."""

from __future__ import annotations

import os
import urllib.parse
import uuid

from proj.settings import *  # noqa: F403

_url = urllib.parse.urlsplit(os.environ.get(
    "CELERY_CLAIM_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))

INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "django.contrib.staticfiles"]  # noqa: F405
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_BROKER_URL = "memory://"

_database = {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": _url.path.lstrip("/") or "test",
    "USER": urllib.parse.unquote(_url.username or "postgres"),
    "PASSWORD": urllib.parse.unquote(_url.password or ""),
    "HOST": _url.hostname or "127.0.0.1",
    "PORT": str(_url.port or 5432),
    # Every run gets its own test databases (Django creates and drops them).
    "TEST": {"NAME": f"test_claims_{uuid.uuid4().hex[:10]}"},
}
DATABASES = {
    "default": _database,
    # A second alias on its own database, which the claims stay out of.
    "claims": {**_database, "TEST": {"NAME": f"{_database['TEST']['NAME']}_claims"}},
}
DATABASE_ROUTERS = ["celery_claim.django.routers.ClaimRouter", "django_claims.routers.ClaimsApart"]
CELERY_CLAIM_DJANGO_DATABASE = "default"
