import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoproject.settings")

from leza_middleware.django.asgi import get_asgi_application

application = get_asgi_application()
