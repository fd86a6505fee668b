"""Endpoint permissions, decided the Django way (``process_view``).

After every middleware's request phase (``AuthenticationMiddleware`` has set
``request.user``), before the view. Who asks: the ``performer=`` hook, else
``request.user``. Whether they may: ``has_permission`` when configured, else
the performer's ``permissions`` when the hook gave some, else Django's own
``request.user.has_perm(permission)`` (``"app_label.codename"``, granted to
users or groups). In async mode the ORM is only used through ``await``
(``ahas_perm``) and a ``has_permission`` hook runs in a thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async

from ..permissions import Permissions
from .identity import Identity, ahas_perm, aload_user, django_has_perm

if TYPE_CHECKING:
    from ..core import Request, RequestCore
    from ..core.hooks import Answer
    from ..performer import Performer

__all__ = ["DjangoPermissions"]


class DjangoPermissions:
    def __init__(self, configured: Permissions, identity: Identity) -> None:
        self.identity = identity
        self.hook = configured.has_permission
        #: The rules, with Django's has_perm when no has_permission hook is set.
        self.permissions = Permissions(
            configured.rules, configured.app_name, self.hook or django_has_perm
        )
        # The decision's texts, when ahas_perm already answered (async).
        self._holds = Permissions((), configured.app_name, _yes)
        self._lacks = Permissions((), configured.app_name, _no)

    def decide(self, core: RequestCore, req: Request, request: Any) -> Answer | None:
        """None lets the view run, else the refusal. A failure (a hook that
        raised) is marked on ``req`` and raised: Django answers 500."""
        try:
            who = self.identity.deciding(request, getattr(request, "user", None))
        except BaseException as exc:
            req.error = type(exc).__name__
            raise
        return core.decide(req, who, request)

    async def adecide(self, core: RequestCore, req: Request, request: Any) -> Answer | None:
        """:meth:`decide` in async mode."""
        needed: str = req.needed  # type: ignore[assignment]
        try:
            user = await aload_user(request)
            who: Performer | None = self.identity.deciding(request, user)
            if who is None or (self.hook is None and who.permissions):
                return core.decide(req, who, request)  # no I/O
            if self.hook is not None:
                # The app's synchronous hook may query the database.
                return await sync_to_async(core.decide)(req, who, request)
            granted = await ahas_perm(user, needed)
            decision = (self._holds if granted else self._lacks).decide(needed, who, request)
            return core.decided(req, decision, who)
        except BaseException as exc:
            req.error = req.error or type(exc).__name__
            raise


def _yes(performer: Any, request: Any, permission: str) -> bool:
    return True


def _no(performer: Any, request: Any, permission: str) -> bool:
    return False
