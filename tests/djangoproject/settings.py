"""Settings of the Django test project (tests/test_django.py).

Loaded with ``settings.configure(...)`` in-process, and as
``DJANGO_SETTINGS_MODULE=djangoproject.settings`` by the uvicorn subprocess.
Storage and the rest of LEZA come from the tests (override_settings) or from
``LEZA_*`` environment variables (the subprocess).
"""

SECRET_KEY = "leza-tests-not-a-secret-0123456789abcdef"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djangoproject.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "leza_middleware.django",
    "djangoproject",  # models.py: audited test models (tests/test_audit_django.py)
]
MIDDLEWARE = [
    "leza_middleware.django.LezaDjangoMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
# Shared-cache in-memory SQLite: one database for every thread (async views and
# the async ORM run queries on executor threads).
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": "file:leza_django_tests?mode=memory&cache=shared",
    }
}
# Fast password hashing: the tests log users in with real passwords.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LEZA = {"geoip_db": False, "app_name": "djangoproject"}
