"""Alembic: let autogenerate see the claims table beside your own tables."""

from __future__ import annotations

import sqlalchemy as sa

from celery_claim import make_table

# Your application's MetaData (usually imported from your models module).
metadata = sa.MetaData()
orders = sa.Table("orders", metadata, sa.Column("id", sa.Integer, primary_key=True))

# Add the claims table, under the name the workers use (claim_table).
make_table("celery_claims", metadata)

# In migrations/env.py:
target_metadata = metadata
