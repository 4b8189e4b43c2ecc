"""Atomic writes: the task's own rows commit together with the claim's completion."""

from __future__ import annotations

import sqlalchemy as sa
from celery import Celery
from sqlalchemy import orm

from celery_claim import ClaimTask

app = Celery("atomic")
app.conf.claim_database_url = "sqlite:///claims.db"

metadata = sa.MetaData()
ledger = sa.Table(
    "ledger", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("account", sa.String(32), nullable=False),
    sa.Column("cents", sa.Integer, nullable=False),
)


@app.task(base=ClaimTask, bind=True, claim_key="transfer:{transfer_id}")
def transfer(self: ClaimTask, transfer_id: int, source: str, target: str, cents: int) -> None:
    with self.claim.atomic() as conn:
        conn.execute(ledger.insert(), [{"account": source, "cents": -cents},
                                       {"account": target, "cents": cents}])
    # Nothing above is visible yet. If the body raises from here on, or the
    # claim was taken over meanwhile, both rows are rolled back.
    if cents <= 0:
        raise ValueError("a transfer moves a positive amount")


class Base(orm.DeclarativeBase):
    pass


class Entry(Base):
    __tablename__ = "ledger_orm"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    account: orm.Mapped[str] = orm.mapped_column(sa.String(32))
    cents: orm.Mapped[int]


@app.task(base=ClaimTask, bind=True, claim_key="deposit:{deposit_id}")
def deposit(self: ClaimTask, deposit_id: int, account: str, cents: int) -> None:
    # The ORM on the same transaction: session.commit() only flushes here.
    with self.claim.session() as session:
        session.add(Entry(account=account, cents=cents))
