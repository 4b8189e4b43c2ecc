"""Django settings for the in-process Django tests: the example project's apps,
PostgreSQL from CELERY_CLAIM_TEST_DATABASE_URL, a test database of their own."""

from __future__ import annotations

import os
import urllib.parse
import uuid

_url = urllib.parse.urlsplit(os.environ.get(
    "CELERY_CLAIM_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))

SECRET_KEY = "tests-only"
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "proj.urls"
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "celery_claim.django",
    "shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

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
    # A second alias on its own database: the claim can live apart from "default".
    "claims": {**_database, "TEST": {"NAME": f"{_database['TEST']['NAME']}_claims"}},
}
DATABASE_ROUTERS = ["celery_claim.django.routers.ClaimRouter", "django_claims.routers.ClaimsApart"]

CELERY_CLAIM_DJANGO_DATABASE = "default"
