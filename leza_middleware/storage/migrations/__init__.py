"""Alembic environment of Leza's tables, shipped with the package.

Not a project of its own: there is no ``alembic.ini``. It is driven by
:mod:`leza_middleware.storage.migrate` (``leza migrate``, ``Leza(migrate=True)``),
which builds the :class:`alembic.config.Config` in code; ``versions/`` holds the
revisions, ``script.py.mako`` the template of new ones (docs/migrations.md).
"""
