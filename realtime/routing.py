from django.urls import path

from realtime.consumers import PaymentConsumer
from realtime.socketio.websocket import WebSocketConsumer as SocketIOWebSocketConsumer

websocket_urlpatterns = [
    path("ws/payments/", PaymentConsumer.as_asgi()),
    path("socket.io/", SocketIOWebSocketConsumer.as_asgi()),
]
