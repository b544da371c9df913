from django.conf import settings
from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.utils.csp import CSP
from django.views.decorators.csp import csp_override
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config import views
from payments.api.apis import AuthTokenApi, PaymentListCreateApi
from realtime.views import index

# Swagger UI's page has an inline script and style and data: icons; only this
# page gets them (everything else: SECURE_CSP, own origin only).
DOCS_CSP = {
    **settings.SECURE_CSP,
    "script-src": [CSP.SELF, CSP.UNSAFE_INLINE],
    "style-src": [CSP.SELF, CSP.UNSAFE_INLINE],
    "img-src": [CSP.SELF, "data:"],
}

urlpatterns = [
    path("", index, name="index"),
    # Browsers ask for it on pages that name no icon (the admin's): a 404
    # there is a console error on every admin page.
    path(
        "favicon.ico",
        RedirectView.as_view(url=static("realtime/favicon.svg"), permanent=True),
    ),
    path("admin/", admin.site.urls),
    path("api/payments/", include("payments.api.urls")),
    # The create route without its slash is served too (as the seed route
    # is): a redirect to add it would lose the POST's body. One spelling in
    # the schema (schema=None leaves this one out).
    path("api/payments", PaymentListCreateApi.as_view(schema=None)),
    path("api/auth/token/", AuthTokenApi.as_view(), name="auth-token"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path(
        "api/docs/",
        # No OPTIONS metadata: the page's HTML renderer has no template for it.
        csp_override(DOCS_CSP)(
            SpectacularSwaggerView.as_view(url_name="schema", metadata_class=None)
        ),
        name="swagger-ui",
    ),
    # Last: every other /api/ path is a JSON 404, DEBUG or not, never a redirect.
    re_path(r"^api(?:/|$)", views.api_not_found, name="api-not-found"),
]

handler400 = "config.views.bad_request"
handler403 = "config.views.permission_denied"
handler404 = "config.views.not_found"
handler500 = "config.views.server_error"
