"""add accounts.email

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("accounts", sa.Column("email", sa.Text))
    op.execute("UPDATE accounts SET email = name || '@example.com'")
    op.alter_column("accounts", "email", nullable=False)


def downgrade() -> None:
    op.drop_column("accounts", "email")
