from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config import views
from payments.apis import AuthTokenApi, PaymentListCreateApi

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/payments/", include("payments.urls")),
    # The create route without its slash is served too (as the seed route
    # is): a redirect to add it would lose the POST's body. One spelling in
    # the schema (schema=None leaves this one out).
    path("api/payments", PaymentListCreateApi.as_view(schema=None)),
    path("api/auth/token/", AuthTokenApi.as_view(), name="auth-token"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path(
        "api/docs/",
        # No OPTIONS metadata: the page's HTML renderer has no template for it.
        SpectacularSwaggerView.as_view(url_name="schema", metadata_class=None),
        name="swagger-ui",
    ),
    # Last: every other /api/ path is a JSON 404, DEBUG or not, never a redirect.
    re_path(r"^api(?:/|$)", views.api_not_found, name="api-not-found"),
]

handler400 = "config.views.bad_request"
handler403 = "config.views.permission_denied"
handler404 = "config.views.not_found"
handler500 = "config.views.server_error"
