from django.conf import settings
from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.utils.csp import CSP
from django.views.decorators.csp import csp_override
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from payments.apis import AuthTokenApi
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
    path("api/payments/", include("payments.urls")),
    path("api/auth/token/", AuthTokenApi.as_view(), name="auth-token"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path(
        "api/docs/",
        csp_override(DOCS_CSP)(SpectacularSwaggerView.as_view(url_name="schema")),
        name="swagger-ui",
    ),
]

handler404 = "config.views.not_found"
handler500 = "config.views.server_error"
