"""users, sessions, clips, labels

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
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(300), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.CheckConstraint("role IN ('labeler', 'admin')", name="ck_users_role"),
    )
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_table(
        "clips",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("utt_id", sa.String(300), nullable=False, unique=True),
        sa.Column("audio", sa.Text, nullable=False),
        sa.Column("duration", sa.Float, nullable=False),
        sa.Column("sample_rate", sa.Integer, nullable=False),
        sa.Column("speaker", sa.String(200)),
        sa.Column("hypothesis", sa.Text, nullable=False),
        sa.Column("priority", sa.Float, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("labels_wanted", sa.Integer, nullable=False),
        sa.Column("labels_done", sa.Integer, nullable=False),
        sa.Column("flagged", sa.Boolean, nullable=False),
        sa.Column("lease_user_id", sa.Integer, sa.ForeignKey("users.id")),
        sa.Column("lease_expires_at", sa.Float),
        sa.Column("imported_at", sa.Float, nullable=False),
    )
    op.create_index("ix_clips_queue", "clips", ["labels_done", "priority"])
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("clip_id", sa.Integer, sa.ForeignKey("clips.id", ondelete="CASCADE"), nullable=False),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("action", sa.String(10), nullable=False),
        sa.Column("text", sa.Text),
        sa.Column("note", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("clip_id", "user_id", name="uq_labels_clip_user"),
        sa.CheckConstraint("action IN ('label', 'skip', 'flag')", name="ck_labels_action"),
    )
    op.create_index("ix_labels_clip_id", "labels", ["clip_id"])
    op.create_index("ix_labels_user_id", "labels", ["user_id"])


def downgrade() -> None:
    op.drop_table("labels")
    op.drop_table("clips")
    op.drop_table("sessions")
    op.drop_table("users")
