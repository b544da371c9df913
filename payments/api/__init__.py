"""The HTTP API (DRF): views, serializers, filters, throttles, idempotency."""
