"""Alembic's entry point for the store: always run from Store.migrate() (store.py), on the
connection that it passes in `config.attributes["connection"]`; never from a config file."""

from alembic import context

from imagemini.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
