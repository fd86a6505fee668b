"""A minimal Django project recording every request with leza-middleware."""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "django-insecure-leza-example-only-do-not-deploy"
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]
ROOT_URLCONF = "exampleproject.urls"
WSGI_APPLICATION = "exampleproject.wsgi.application"
USE_TZ = True
DATABASES: dict[str, dict[str, str]] = {}  # the example needs no database of its own

INSTALLED_APPS = [
    "leza_middleware.django",  # system checks: `manage.py check` validates LEZA
]

MIDDLEWARE = [
    "leza_middleware.django.LezaDjangoMiddleware",  # the one line: first, to see everything
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
]
# Django sessions kept in a signed cookie, so the example needs no database. Leza
# keys each user session by a keyed hash of Django's session key.
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"

# The keyword arguments of leza_middleware.Leza(...); LEZA_* environment
# variables fill in whatever is left out.
LEZA = {
    "storage": f"sqlite:///{BASE_DIR / 'leza.db'}",
    "app_name": "django-example",
    # Who made the request: a callable(request) -> Performer | dict | None, or its
    # dotted path. Without it, request.user (django.contrib.auth) is used.
    "performer": "exampleproject.identity.performer",
    "trusted_proxies": [],  # add your reverse proxies' addresses here
    # Requests to these routes are recorded as action "logout" and end the session
    # (with django.contrib.auth, logout() does this by itself).
    "logout_routes": ["/logout/"],
}
