"""Shared fixtures. Redis is real: REDIS_URL comes from scripts/test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from django.conf import settings
from rest_framework.test import APIClient

# Chromium through Playwright: the browser tests' fixtures (chromium, open_page).
pytest_plugins = ["tests.browser"]


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("REDIS_URL"):
        raise pytest.UsageError(
            "REDIS_URL is not set: run the tests with scripts/test, which starts "
            "an embedded Valkey, or point REDIS_URL at a Redis server."
        )


@pytest.fixture(autouse=True)
def isolated_channel_layer(settings):
    """Give each test its own channel-layer key space on the shared Redis."""
    settings.CHANNEL_LAYERS = {
        "default": {
            **settings.CHANNEL_LAYERS["default"],
            "CONFIG": {
                **settings.CHANNEL_LAYERS["default"]["CONFIG"],
                "prefix": f"test-{uuid.uuid4().hex[:12]}",
            },
        }
    }
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    channel_layers.backends.clear()


CORE_LAYER = "channels_redis.core.RedisChannelLayer"
PUBSUB_LAYER = "realtime.layers.RedisPubSubChannelLayer"


@pytest.fixture
def core_channel_layer(settings, isolated_channel_layer: str) -> str:
    """Run the test on channels-redis's core layer, CHANNELS_BACKEND's alternative."""
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS["default"]["BACKEND"] = CORE_LAYER
    channel_layers.backends.clear()
    return isolated_channel_layer


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def redis_url() -> str:
    return settings.REDIS_URL


@pytest.fixture
async def asgi_client() -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on config.asgi's HTTP application, Django's middleware and all.

    A fresh handler of the class config.asgi serves HTTP with, so that its
    kept threads' database connections can be closed after the test.
    """
    from config.handlers import SyncStackASGIHandler

    handler = SyncStackASGIHandler()
    transport = httpx.ASGITransport(app=handler)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver"
    ) as client:
        yield client
    handler.threads.close()
