"""Alembic migrations, shipped inside the distribution so `trainyard-api migrate` finds them anywhere."""
