"""The server's durable state: API keys (hashed), their limits, and the ledger of generations.

SQLite (one WAL file under --data-dir) or PostgreSQL (--database-url postgresql://...), both
through SQLAlchemy 2's async engine, the schema kept by Alembic migrations (migrations/).

    store.py       the Store: keys, reservations against their limits, the ledger; how limits
                   stay exact under concurrency
    clock.py       time in ms, limit periods (midnight UTC, Monday weeks), the tests' clock
    commands.py    `imagemini keys ...`, and where `imagemini serve` finds its store

Nothing is imported here, so that `imagemini` commands that need no store do not load SQLAlchemy.
"""
