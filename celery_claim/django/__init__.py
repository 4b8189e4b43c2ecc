"""celery-claim for Django projects: the claim on Django's own connection.

Add ``"celery_claim.django"`` to ``INSTALLED_APPS`` and set
``CELERY_CLAIM_DJANGO_DATABASE = "default"`` (a ``DATABASES`` alias). Then:

* ``manage.py migrate`` creates the claims table (the app's migration);
* ``with self.claim.atomic():`` is ``transaction.atomic(using=alias)``, so ORM
  writes commit together with the claim's fenced completion, and
  ``transaction.on_commit`` callbacks run only if the claim completes;
* the admin lists the claims and releases them (fenced, like the CLI);
* ``manage.py celery_claim status|list|release|purge|stats`` mirrors the CLI.

See ``docs/django.md``.
"""

from __future__ import annotations
