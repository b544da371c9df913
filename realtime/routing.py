from django.urls import path

from realtime.consumers import PaymentConsumer

websocket_urlpatterns = [
    path("ws/payments/", PaymentConsumer.as_asgi()),
]
