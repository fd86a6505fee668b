"""``leza migrate [--revision REV] [--sql | --current]``: bring Leza's tables up to date.

Runs the Alembic revisions shipped in the package (docs/migrations.md) under
the migration lock: safe while the app runs, and from several hosts at once.
"""

from __future__ import annotations

import argparse

from ..storage.migrate import HEAD, migrate, migration_sql, schema_state
from ..storage.routed import backends_of
from ..storage.sql import SQLStorage
from .common import CliError, Context, missing_sqlite_file

__all__ = ["HELP", "add_arguments", "run"]

HELP = "create or upgrade Leza's tables to this version's schema (Alembic migrations)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--revision",
        default="head",
        metavar="REV",
        help=f"the revision to upgrade to (default: head, which is {HEAD})",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--sql",
        action="store_true",
        help="print the SQL instead of running it (from the database's current revision)",
    )
    what.add_argument(
        "--current",
        action="store_true",
        help="show the database's revision; exit status 1 when a migration is pending",
    )


def run(ctx: Context, args: argparse.Namespace) -> int:
    storage = ctx.leza().storage
    stores = [b for b in backends_of(storage) if isinstance(b, SQLStorage)]
    if not stores:
        print(f"{storage.describe()} has no SQL schema: nothing to migrate", file=ctx.stdout)
        return 0
    # Storage by kind: each SQL store in turn (the worst exit status wins).
    return max(_run_one(ctx, args, store) for store in stores)


def _run_one(ctx: Context, args: argparse.Namespace, storage: SQLStorage) -> int:
    where = storage.describe_url()
    if args.current:
        missing = missing_sqlite_file(storage)
        if missing is not None:
            raise CliError(f"no database at {missing} (nothing recorded there yet)", code=1)
        state = schema_state(storage)
        print(f"{where}: {state.describe()}", file=ctx.stdout)
        return 0 if state.recorded == HEAD else 1
    if args.sql:
        migration_sql(storage, ctx.stdout, args.revision)
        return 0
    created = missing_sqlite_file(storage) is not None
    result = migrate(storage, args.revision)
    if result.adopted is not None:
        print(
            f"{where}: recorded its tables (made before migrations) at revision {result.adopted}",
            file=ctx.stdout,
        )
    if result.changed:
        start = "a new database" if created else result.before or "an empty database"
        print(f"{where}: migrated {start} to revision {result.after}", file=ctx.stdout)
    else:
        print(f"{where}: already at revision {result.after}, nothing to do", file=ctx.stdout)
    return 0
