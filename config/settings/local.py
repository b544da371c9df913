"""Development: debug on, SQLite file, REDIS_URL given by scripts/run."""

from .base import *  # noqa: F403
from .base import env

# GENERAL
# ------------------------------------------------------------------------------
DEBUG = env.bool("DJANGO_DEBUG", default=True)
SECRET_KEY = env("DJANGO_SECRET_KEY", default="local-insecure-secret-key-change-me")
ALLOWED_HOSTS = env.list(
    "DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"]
)

# STATIC
# ------------------------------------------------------------------------------
# The admin's CSS straight from the apps, no collectstatic needed.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

# CORS AND WEBSOCKET ORIGINS
# ------------------------------------------------------------------------------
CORS_ALLOWED_ORIGINS = env.list(
    "CORS_ALLOWED_ORIGINS", default=["http://localhost:3000"]
)

# PAYMENTS
# ------------------------------------------------------------------------------
PAYMENTS_SIMULATED_DELAY = env.float("PAYMENTS_SIMULATED_DELAY", default=3.0)
