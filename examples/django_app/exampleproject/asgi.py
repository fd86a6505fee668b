import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exampleproject.settings")

# Django's ASGI application plus lifespan, so queued events are written when
# uvicorn stops (Django's own handler has no lifespan support).
from leza_middleware.django.asgi import get_asgi_application

application = get_asgi_application()
