"""One storage, set up once before it is first read (the read APIs share it)."""

from __future__ import annotations

from .errors import LezaError
from .storage.base import Storage

__all__ = ["ReadyStorage"]


class ReadyStorage:
    """``ready()`` returns the storage, set up (tables created, migrated) on the first call.

    The recorder sets the storage up before its first write; the read side
    (``leza.query``, ``leza.sessions``, ``leza.audit``, ``leza.trace``, erasure)
    may read first, so every reader goes through this one gate. A storage that
    cannot be set up is a :class:`~leza_middleware.LezaError` naming it.
    """

    __slots__ = ("_ready", "storage")

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._ready = False

    def ready(self) -> Storage:
        if not self._ready:
            try:
                self.storage.setup()  # idempotent: a race sets it up twice, harmlessly
            except Exception as exc:
                where = self.storage.describe()
                raise LezaError(f"storage {where} is not reachable: {exc}") from exc
            self._ready = True
        return self.storage
