"""The smallest Django settings whose ``LOGGING`` streams the app's records, Django's and
runserver's access lines live (see the Django recipe in docs/configuration.rst)."""

import os

SECRET_KEY = "only-for-this-example"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "shop.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "console": {"class": "logging.StreamHandler"},
        "live": {
            "class": "wslogging.WebSocketHandler",
            "port": int(os.environ.get("WSLOGGING_PORT", "3000")),
        },
    },
    "root": {"level": "INFO", "handlers": ["console", "live"]},
    # Django's own loggers keep the handlers of its default configuration unless named here,
    # and runserver's access lines (django.server) do not propagate: both go to the root's.
    "loggers": {
        "django": {"level": "INFO", "handlers": [], "propagate": True},
        "django.server": {"level": "INFO", "handlers": [], "propagate": True},
    },
}
