"""create accounts

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
    )
    op.execute("INSERT INTO accounts (name) VALUES ('alice'), ('bob')")


def downgrade() -> None:
    op.drop_table("accounts")
