"""keys, reservations and generations

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
        "keys",
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("is_management", sa.Boolean, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("limit_nanos", sa.BigInteger, nullable=True),
        sa.Column("limit_reset", sa.String(16), nullable=True),
        sa.Column("requests_per_minute", sa.Integer, nullable=True),
        sa.Column("tokens_per_minute", sa.Integer, nullable=True),
        sa.Column("usage_nanos", sa.BigInteger, nullable=False),
        sa.Column("period_usage_nanos", sa.BigInteger, nullable=False),
        sa.Column("period_start_ms", sa.BigInteger, nullable=False),
        sa.Column("reserved_nanos", sa.BigInteger, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=True),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "reservations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger, nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_reservations_expires", "reservations", ["expires_at_ms"])
    op.create_table(
        "generations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("streamed", sa.Boolean, nullable=False),
        sa.Column("cancelled", sa.Boolean, nullable=False),
        sa.Column("latency_ms", sa.Integer, nullable=True),
        sa.Column("generation_time_ms", sa.Integer, nullable=True),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("native_finish_reason", sa.String(32), nullable=True),
        sa.Column("tokens_prompt", sa.Integer, nullable=False),
        sa.Column("tokens_completion", sa.Integer, nullable=False),
        sa.Column("native_tokens_reasoning", sa.Integer, nullable=False),
        sa.Column("native_tokens_completion_images", sa.Integer, nullable=False),
        sa.Column("native_tokens_cached", sa.Integer, nullable=False),
        sa.Column("num_media_prompt", sa.Integer, nullable=False),
        sa.Column("num_media_completion", sa.Integer, nullable=False),
        sa.Column("num_choices", sa.Integer, nullable=False),
        sa.Column("cost_nanos", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_generations_key_created", "generations", ["key_hash", "created_at_ms"])


def downgrade() -> None:
    op.drop_table("generations")
    op.drop_table("reservations")
    op.drop_table("keys")
