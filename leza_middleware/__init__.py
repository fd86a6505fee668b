"""leza-middleware: a one-line audit and traceability layer for Python web apps.

from leza_middleware import Leza, LezaMiddleware

leza = Leza(storage="sqlite:///leza.db")
app.add_middleware(LezaMiddleware, leza=leza)
"""

from .__about__ import __version__
from .context import current_request_id
from .errors import LezaConfigError, LezaError
from .events import AccessEvent, Device, Geo
from .integrations.asgi import LezaMiddleware
from .integrations.wsgi import LezaWSGIMiddleware
from .leza import Leza
from .performer import Organization, Performer

__all__ = [
    "AccessEvent",
    "Device",
    "Geo",
    "Leza",
    "LezaConfigError",
    "LezaError",
    "LezaMiddleware",
    "LezaWSGIMiddleware",
    "Organization",
    "Performer",
    "__version__",
    "current_request_id",
]
