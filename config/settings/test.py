"""Tests: real Redis (REDIS_URL, set by scripts/test), SQLite or DATABASE_URL."""

import os
import tempfile
from pathlib import Path

from .base import *  # noqa: F403
from .base import DATABASES, env

# GENERAL
# ------------------------------------------------------------------------------
SECRET_KEY = env("DJANGO_SECRET_KEY", default="test-secret-key-not-for-production")
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# DATABASES
# ------------------------------------------------------------------------------
# A file, not SQLite's in-memory default: the end-to-end tests' daphne and
# worker processes must open the very database the test writes to.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # One file per test run, so runs side by side never share a database.
    DATABASES["default"]["TEST"] = {
        "NAME": str(
            Path(tempfile.gettempdir()) / f"payments-test-{os.getpid()}.sqlite3"
        )
    }

# STATIC
# ------------------------------------------------------------------------------
# The web process the browser tests start serves the apps' static files
# (WhiteNoise from the finders), no collectstatic needed.
WHITENOISE_USE_FINDERS = True

# CORS AND WEBSOCKET ORIGINS
# ------------------------------------------------------------------------------
CORS_ALLOWED_ORIGINS = ["http://localhost:3000"]

# CHANNELS
# ------------------------------------------------------------------------------
# Each test run gets its own key space so runs sharing one Redis never meet.
CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = env(  # noqa: F405
    "CHANNELS_PREFIX", default="test"
)
TASKS_WAKEUP_CHANNEL = env(
    "TASKS_WAKEUP_CHANNEL",
    default=f"{CHANNEL_LAYERS['default']['CONFIG']['prefix']}:tasks-enqueued",  # noqa: F405
)

# CACHES AND THROTTLING
# ------------------------------------------------------------------------------
# Per run, like the channel layer; limits high enough that only the tests
# about throttling meet them.
CACHES["default"]["KEY_PREFIX"] = f"test-{os.getpid()}"  # noqa: F405
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {  # noqa: F405
    "payments_create_anon": "100000/min",
    "payments_create_user": "100000/min",
    "auth_token": "100000/min",
}

# LOGIN LOCKOUT
# ------------------------------------------------------------------------------
# Test clients' login() calls authenticate() without a request, which
# django-axes refuses; the lockout's tests turn it on (settings fixture, or
# AXES_ENABLED=true for live processes).
AXES_ENABLED = env.bool("AXES_ENABLED", default=False)
