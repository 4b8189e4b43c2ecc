"""Settings of the example project: PostgreSQL, Redis, and the claim on Django's connection.

``DATABASE_URL`` (default: the test server's ``test`` database) and
``CELERY_BROKER_URL`` (default: Redis on localhost) come from the environment.
"""

from __future__ import annotations

import os
import urllib.parse

_db = urllib.parse.urlsplit(
    os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "proj.urls"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "celery_claim.django",  # the claims table, its admin and manage.py celery_claim
    "shop",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
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

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db.path.lstrip("/") or "postgres",
        "USER": urllib.parse.unquote(_db.username or "postgres"),
        "PASSWORD": urllib.parse.unquote(_db.password or ""),
        "HOST": _db.hostname or "127.0.0.1",
        "PORT": str(_db.port or 5432),
        "CONN_MAX_AGE": int(os.environ.get("DJANGO_CONN_MAX_AGE", "0")),
    },
}

# --- Celery (app.config_from_object("django.conf:settings", namespace="CELERY")) ---
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("EXAMPLE_QUEUE", "celery")
if os.environ.get("EXAMPLE_KEY_PREFIX"):  # tests keep their messages apart
    CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": os.environ["EXAMPLE_KEY_PREFIX"]}

# The claim lives in the "default" database, on Django's own connection.
CELERY_CLAIM_DJANGO_DATABASE = "default"
CELERY_CLAIM_LEASE_SECONDS = float(os.environ.get("EXAMPLE_LEASE_SECONDS", "60"))
