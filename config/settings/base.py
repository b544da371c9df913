"""Settings shared by every environment; all environment reading happens here."""

from datetime import timedelta
from pathlib import Path

import environ
from django.utils.csp import CSP
from redis.maint_notifications import MaintNotificationsConfig

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()

# GENERAL
# ------------------------------------------------------------------------------
DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env("DJANGO_SECRET_KEY", default=None)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[])
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = True
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# DATABASES
# ------------------------------------------------------------------------------
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DJANGO_CONN_MAX_AGE", default=0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Development and tests only. The web process and the worker write to
    # one file: WAL lets readers proceed during a write, and IMMEDIATE takes
    # the write lock at BEGIN, so a second writer waits (up to timeout
    # seconds) instead of failing with "database is locked" on upgrade.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    )
else:
    # A database that stops answering without closing its connections (a
    # failover that moved its address, a network partition) held a request
    # or a job for the kernel's retransmissions: over two minutes to connect,
    # some fifteen on an open connection. libpq's own timeouts close such a
    # connection within DATABASE_TCP_TIMEOUT seconds, so the request gets its
    # 503 and the worker waits for the database (tests/test_database_outage.py);
    # an answer that is only slow (a long query) is not cut: the server's
    # kernel still acknowledges. Values in DATABASE_URL's query win.
    DATABASE_TCP_TIMEOUT = env.int("DJANGO_DB_TCP_TIMEOUT", default=10)
    for option, value in {
        "connect_timeout": DATABASE_TCP_TIMEOUT,
        "tcp_user_timeout": DATABASE_TCP_TIMEOUT * 1000,  # milliseconds
        # An idle connection is probed too, or it is found dead only when
        # lent to the next request.
        "keepalives": 1,
        "keepalives_idle": max(1, DATABASE_TCP_TIMEOUT // 2),
        "keepalives_interval": 1,
        "keepalives_count": max(1, DATABASE_TCP_TIMEOUT // 2),
    }.items():
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault(option, value)
    # A connection opened per request costs a backend start and
    # authentication every time. A pool per process (psycopg_pool, Django's
    # "pool" option) lends each request a connection opened earlier, and
    # bounds how many the process holds. Pooling excludes CONN_MAX_AGE.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # Both turned on is refused by a system check (config.checks).
    if env.bool("DJANGO_DB_POOL", default=not DATABASES["default"]["CONN_MAX_AGE"]):
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": env.int("DJANGO_DB_POOL_MIN_SIZE", default=2),
            "max_size": env.int("DJANGO_DB_POOL_MAX_SIZE", default=20),
            # Seconds a request waits for a connection (all lent, or the
            # database away) before it is answered 503.
            "timeout": env.float("DJANGO_DB_POOL_TIMEOUT", default=5.0),
            # How long the pool retries a lost connection, its waits doubling
            # (1 s, then 2 s), before it gives up and connects again on the
            # next request. psycopg_pool's 5 minutes left a web process
            # answering 503 for up to about an outage's length after the
            # database was back (its next try came that late).
            "reconnect_timeout": env.float(
                "DJANGO_DB_POOL_RECONNECT_TIMEOUT", default=5.0
            ),
        }

# ASGI
# ------------------------------------------------------------------------------
# Threads the web process keeps for HTTP requests' sync code (Django's
# handler starts one per request, config.handlers says what that costs); a
# request beyond them waits for one. Each busy one holds a database
# connection: the pool's max size must be above it (config.checks).
ASGI_REQUEST_THREADS = env.int("ASGI_REQUEST_THREADS", default=16)
# Seconds a request waits for a free thread before it is answered 503 (all
# of them stuck, behind a database lock say, rather than merely busy).
ASGI_REQUEST_THREAD_TIMEOUT = env.float("ASGI_REQUEST_THREAD_TIMEOUT", default=10.0)

# URLS
# ------------------------------------------------------------------------------
ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

# APPS
# ------------------------------------------------------------------------------
DJANGO_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
]
THIRD_PARTY_APPS = [
    "channels",
    "corsheaders",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_tasks_db",
    "axes",
]
LOCAL_APPS = [
    "payments",
    "realtime",
    "ops",
]
# Local apps before third-party ones: payments' db_worker command (the worker
# with its recovery loop) must win over django_tasks_db's of the same name.
INSTALLED_APPS = DJANGO_APPS + LOCAL_APPS + THIRD_PARTY_APPS

# MIDDLEWARE
# ------------------------------------------------------------------------------
# Then ApiErrorsMiddleware: it checks the Host of /api/ requests before
# any other middleware asks for it (config.middleware says why).
# Before it, the request id (every later log line carries it) and the
# operations endpoints, which skip the rest (ops.middleware says why).
MIDDLEWARE = [
    "ops.request_id.RequestIdMiddleware",
    "ops.middleware.OperationsEndpointsMiddleware",
    "config.middleware.ApiErrorsMiddleware",
    "config.middleware.DatabaseUnavailableMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "config.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns the admin's lockout into a 429.
    "axes.middleware.AxesMiddleware",
]

# TEMPLATES AND STATIC
# ------------------------------------------------------------------------------
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Content-Security-Policy on every response (Django's middleware): scripts,
# styles, images and connections from this origin only, no inline code.
# 'self' in connect-src covers ws:/wss: to the same host (CSP Level 3; the
# browser tests check it in Chromium). /api/docs/ widens img-src for Swagger
# UI's data: icons (config/urls.py).
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF],
    "font-src": [CSP.SELF],
    "connect-src": [CSP.SELF, *env.list("DJANGO_CSP_CONNECT_SRC", default=[])],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}

# PASSWORDS
# ------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"django.contrib.auth.password_validation.{name}"}
    for name in (
        "UserAttributeSimilarityValidator",
        "MinimumLengthValidator",
        "CommonPasswordValidator",
        "NumericPasswordValidator",
    )
]

# LOGIN LOCKOUT (django-axes)
# ------------------------------------------------------------------------------
# Failed logins (admin and POST /api/auth/token/) are recorded in the
# database; AXES_FAILURE_LIMIT of them from one address, or for one username
# from any number of addresses, lock further attempts out for the cool-off
# (the pair address+username is covered by either). The store is the
# database the users live in, so with it away no login succeeds: it fails
# closed. Locked-out attempts are not recorded, so they neither grow a row
# nor extend the lockout.
AXES_ENABLED = env.bool("AXES_ENABLED", default=True)
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(seconds=env.int("AXES_COOLOFF_SECONDS", default=900))
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# The address as the throttles see it (DJANGO_NUM_PROXIES), not a header
# any client can send.
AXES_CLIENT_IP_CALLABLE = "payments.api.throttling.client_address"
AXES_DISABLE_ACCESS_LOG = True

# CORS AND WEBSOCKET ORIGINS
# ------------------------------------------------------------------------------
# One list serves both: REST CORS and the WebSocket handshake's Origin check.
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_URLS_REGEX = r"^/api/.*$"
CORS_ALLOW_HEADERS = (
    "accept",
    "content-type",
    "idempotency-key",
    "x-client-secret",
    "x-csrftoken",
    "x-request-id",
)
# X-Request-ID: a page can quote the id of a failed request (ops.request_id).
CORS_EXPOSE_HEADERS = ("location", "retry-after", "x-request-id")

# CHANNELS
# ------------------------------------------------------------------------------
# scripts/run and scripts/test point this at an embedded Valkey when unset.
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")
CHANNEL_LAYERS = {
    "default": {
        # Pub/sub: one Redis command per frame, seven times the core layer's
        # frames per second (BENCHMARKS.md); realtime.layers closes sockets
        # that may have missed frames while it reconnected. The core layer
        # (channels_redis.core.RedisChannelLayer), which queues messages in
        # Redis, is the alternative.
        "BACKEND": env(
            "CHANNELS_BACKEND", default="realtime.layers.RedisPubSubChannelLayer"
        ),
        "CONFIG": {
            # The layer waits for messages with a blocking pop that Redis
            # answers after 5 s; redis-py 8 gives up reading after 5 s by
            # default, so every idle socket crashed ("Timeout reading from").
            # Read for longer than the pop waits, still bounded so a Redis
            # that vanished is noticed.
            # redis-py 8 turns maintenance notifications on for RESP3, and
            # with them on its pool hands out idle connections unchecked:
            # after a Redis restart the next WebSocket handshake failed (500)
            # on a dead pooled connection. Off, the pool reconnects a dead
            # idle connection; a command failing in flight still fails, so a
            # socket whose Redis went away is closed, not kept groupless.
            "hosts": [
                {
                    "address": REDIS_URL,
                    "socket_timeout": 15,
                    # Without it redis-py waits socket_timeout to connect too.
                    "socket_connect_timeout": 5,
                    # redis-py's default pool (100) fails at once when empty:
                    # 10,000 sockets dropping together left 9,801 stale group
                    # memberships (BENCHMARKS.md).
                    "max_connections": env.int(
                        "CHANNELS_MAX_CONNECTIONS", default=1000
                    ),
                    "maint_notifications_config": MaintNotificationsConfig(
                        enabled=False
                    ),
                }
            ],
            "prefix": env("CHANNELS_PREFIX", default="asgi"),
            # Core layer only (pub/sub queues in the web process and ignores
            # these): queue length per Redis channel key before group_send
            # drops a message. The sockets of one web process share one key,
            # so this bounds a burst to all of a process's sockets together,
            # not to each; messages beyond it are dropped, warned and counted.
            "capacity": env.int("CHANNELS_CAPACITY", default=1000),
            "expiry": 60,
        },
    },
}

# CACHES
# ------------------------------------------------------------------------------
# Throttle counters live on this Redis (LOCATION, KEY_PREFIX and the socket
# timeouts are used; payments.api.throttling), shared by every web process. If
# Redis is away throttling lets requests through, never a 500.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env("CACHE_PREFIX", default="payments"),
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    },
}

# TASKS
# ------------------------------------------------------------------------------
TASKS = {
    "default": {
        "BACKEND": "django_tasks_db.DatabaseBackend",
        "QUEUES": ["default"],
    },
}
# Enqueues are announced here (Redis pub/sub) after commit, so idle
# db_workers start at once instead of at their next --interval poll. Under
# the channel layer's prefix: deployments sharing a Redis wake only their own.
TASKS_WAKEUP_CHANNEL = env(
    "TASKS_WAKEUP_CHANNEL",
    default=f"{CHANNEL_LAYERS['default']['CONFIG']['prefix']}:tasks-enqueued",
)
# Seconds between a db_worker's heartbeats (payments.worker.heartbeat), and seconds
# without one after which other workers take it as dead and run its jobs
# again. A worker that cannot renew within TASKS_WORKER_DEAD_AFTER minus one
# interval exits first. At least twice the interval. 10 s, not less: on two
# loaded cores a renewal waiting behind SQLite's writers once took over 4 s,
# and a worker that exits for that drops nothing but restarts for nothing.
TASKS_WORKER_HEARTBEAT_INTERVAL = env.float(
    "TASKS_WORKER_HEARTBEAT_INTERVAL", default=1.0
)
TASKS_WORKER_DEAD_AFTER = env.float("TASKS_WORKER_DEAD_AFTER", default=10.0)
# Seconds a db_worker keeps its database connection between jobs, whatever
# DJANGO_CONN_MAX_AGE says (it is one thread running job after job); not
# used with the PostgreSQL pool, which keeps connections itself.
TASKS_WORKER_CONN_MAX_AGE = env.int("TASKS_WORKER_CONN_MAX_AGE", default=60)

# REST FRAMEWORK
# ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: an anonymous request to an endpoint that needs a user gets
    # 401 with "WWW-Authenticate: Token" rather than a bare 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {
        "payments_create_anon": env("PAYMENTS_CREATE_RATE_ANON", default="60/min"),
        "payments_create_user": env("PAYMENTS_CREATE_RATE_USER", default="120/min"),
        "auth_token": env("AUTH_TOKEN_RATE", default="10/min"),
    },
    # Proxies in front of the web process, so throttling sees the client's
    # address (X-Forwarded-For) rather than the proxy's. 0, not DRF's None:
    # None believes any X-Forwarded-For, and a client that sends its own
    # gets a fresh per-address allowance with every request.
    "NUM_PROXIES": env.int("DJANGO_NUM_PROXIES", default=0),
    "DEFAULT_PARSER_CLASSES": ["payments.api.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "payments.api.exception_handler.api_exception_handler",
    "NON_FIELD_ERRORS_KEY": "body",
    "UNAUTHENTICATED_USER": None,
}

# PAYMENTS
# ------------------------------------------------------------------------------
PAYMENTS_GATEWAY = env(
    "PAYMENTS_GATEWAY", default="payments.gateways.simulated.SimulatedGateway"
)
PAYMENTS_SIMULATED_DELAY = env.float("PAYMENTS_SIMULATED_DELAY", default=0.0)
PAYMENTS_DEFAULT_CURRENCY = env("PAYMENTS_DEFAULT_CURRENCY", default="usd")
# Only logged-in users (session or token) may create payments.
PAYMENTS_REQUIRE_AUTH = env.bool("PAYMENTS_REQUIRE_AUTH", default=False)
PAYMENTS_CURRENCIES = env.list(
    "PAYMENTS_CURRENCIES", default=["usd", "eur", "gbp", "jpy", "chf", "cad", "aud"]
)
# A pending or processing payment not moved on for this long (seconds) is
# taken as stuck and its job enqueued again by the worker's recovery loop.
PAYMENTS_STUCK_AFTER = env.float("PAYMENTS_STUCK_AFTER", default=60.0)
# Seconds an Idempotency-Key is remembered (then prune_idempotency_keys).
PAYMENTS_IDEMPOTENCY_KEY_TTL = env.int("PAYMENTS_IDEMPOTENCY_KEY_TTL", default=86400)
# Seconds between rounds of the worker's recovery loop.
PAYMENTS_RECOVERY_INTERVAL = env.float("PAYMENTS_RECOVERY_INTERVAL", default=2.0)
# A status change not yet pushed after this many seconds is pushed again.
PAYMENTS_REDELIVER_AFTER = env.float("PAYMENTS_REDELIVER_AFTER", default=2.0)
# Seconds between the worker's batched writes of "pushed" marks
# (payments.outbox); keep it well under PAYMENTS_REDELIVER_AFTER, or changes
# pushed but not yet marked are pushed twice.
PAYMENTS_NOTIFIED_MARK_INTERVAL = env.float(
    "PAYMENTS_NOTIFIED_MARK_INTERVAL", default=0.2
)

# LOGGING
# ------------------------------------------------------------------------------
# "plain" lines for people, "json" (one object per line, python-json-logger)
# for a log pipeline; production defaults to json. Every line carries the
# request id (ops.request_id) of the request or job it was written for.
LOG_FORMATS = ("plain", "json")
# Another value is the system check payments.E011's; plain until then.
LOG_FORMAT = env("DJANGO_LOG_FORMAT", default="plain")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
        },
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(process)d %(request_id)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger", "process": "pid"},
            "timestamp": True,
        },
    },
    "filters": {
        "dropped_messages": {"()": "realtime.dropped_messages.DroppedMessageCounter"},
        # On the handler: a logger's filters miss its children's records.
        "security_without_traceback": {"()": "config.security_log.WithoutTraceback"},
        "request_id": {"()": "ops.request_id.RequestIdFilter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT if LOG_FORMAT in LOG_FORMATS else "plain",
            "filters": ["request_id", "security_without_traceback"],
        },
    },
    "root": {"handlers": ["console"], "level": env("DJANGO_LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "channels_redis.core": {"level": "INFO", "filters": ["dropped_messages"]},
    },
}

# METRICS (ops.metrics)
# ------------------------------------------------------------------------------
# Bearer token /metrics asks for (Authorization: Bearer <token>); unset, the
# endpoint is off and answers 404. Each web process serves its own counters
# on its own port; a db_worker serves its own on METRICS_WORKER_PORT (0: no
# endpoint), bound to METRICS_WORKER_ADDR, with the same token.
METRICS_TOKEN = env("METRICS_TOKEN", default="")
METRICS_WORKER_PORT = env.int("METRICS_WORKER_PORT", default=0)
METRICS_WORKER_ADDR = env("METRICS_WORKER_ADDR", default="127.0.0.1")

# REALTIME
# ------------------------------------------------------------------------------
REALTIME_MAX_SUBSCRIPTIONS = env.int("REALTIME_MAX_SUBSCRIPTIONS", default=100)
# Largest client frame, in bytes; a bigger one closes the socket with 1009.
REALTIME_MAX_FRAME_BYTES = env.int("REALTIME_MAX_FRAME_BYTES", default=4096)
# Client frames per second a socket may send (a token bucket of twice this);
# past it frames are answered "rate_limited", and persisting closes with 1008.
REALTIME_RATE_LIMIT = env.float("REALTIME_RATE_LIMIT", default=10.0)
# Open WebSockets per client address (DJANGO_NUM_PROXIES) per web process;
# a handshake past it is refused with 403.
REALTIME_MAX_CONNECTIONS_PER_CLIENT = env.int(
    "REALTIME_MAX_CONNECTIONS_PER_CLIENT", default=50
)
# Socket.IO (/socket.io/): seconds between the server's pings, and seconds
# the client has to answer one before the session is closed (Engine.IO's
# pingInterval and pingTimeout; the client gives up after their sum).
SOCKETIO_PING_INTERVAL = env.float("SOCKETIO_PING_INTERVAL", default=25.0)
SOCKETIO_PING_TIMEOUT = env.float("SOCKETIO_PING_TIMEOUT", default=20.0)
# Largest polling POST body, in bytes; bigger ones are refused 413 from their
# Content-Length. WebSocket frames keep REALTIME_MAX_FRAME_BYTES; the open
# packet's maxPayload is the smallest real limit: these two, daphne's message
# size and WEB_MAX_BODY_BYTES for /socket.io/ (realtime.socketio.limits).
SOCKETIO_MAX_PAYLOAD = env.int("SOCKETIO_MAX_PAYLOAD", default=16384)
# Seconds a WebSocket opened to upgrade a polling session has to complete
# the upgrade (probe, then "5") before it is closed; the session stays on
# polling (Engine.IO's upgradeTimeout).
SOCKETIO_UPGRADE_TIMEOUT = env.float("SOCKETIO_UPGRADE_TIMEOUT", default=10.0)
# Whether polling answers a cross-origin request with credentials allowed
# (Access-Control-Allow-Credentials), for a client using withCredentials.
SOCKETIO_CORS_CREDENTIALS = env.bool("SOCKETIO_CORS_CREDENTIALS", default=False)
# Socket.IO sessions opened by polling per client address per web process
# (the process that opened one holds it until it ends); a handshake past it
# is answered 429. Sessions opened on a WebSocket count against
# REALTIME_MAX_CONNECTIONS_PER_CLIENT instead.
SOCKETIO_MAX_SESSIONS_PER_CLIENT = env.int(
    "SOCKETIO_MAX_SESSIONS_PER_CLIENT", default=50
)
# Redis connections per web process for sessions: each pending GET holds
# one while it waits (WebSockets hold none of their own).
SOCKETIO_MAX_REDIS_CONNECTIONS = env.int("SOCKETIO_MAX_REDIS_CONNECTIONS", default=1000)

# WEB SERVER (realtime.server, realtime.http_edge)
# ------------------------------------------------------------------------------
# Largest request body in bytes, by path prefix (the longest match wins;
# a path none matches gets the smallest): "/api/=65536;/=2621440". A body
# over it is answered 413 before it is read (declared) or as soon as it
# passes the limit (chunked). "/" matches DATA_UPLOAD_MAX_MEMORY_SIZE.
WEB_MAX_BODY_BYTES = env.dict(
    "WEB_MAX_BODY_BYTES",
    cast={"value": int},
    default={"/api/": 64 * 1024, "/": 2_621_440},
)
# Seconds a connection has to send a whole request head, from its opening
# or the end of its previous response (then it is closed; 0: no deadline).
WEB_HEAD_TIMEOUT = env.float("WEB_HEAD_TIMEOUT", default=10.0)
# Seconds a request has to send its whole body, from the end of its head
# (then 408 and closed; 0: no deadline). Each byte restarts twisted's idle
# timer, so without it a body trickled within its size limit never ends.
WEB_BODY_TIMEOUT = env.float("WEB_BODY_TIMEOUT", default=30.0)
# Connections the kernel queues for the web process before it accepts them
# (the listen backlog of realtime.server's TCP endpoints; Twisted's default
# is 50). A burst past it waits for SYN retries, 1 s then 3 s, before its
# request is even read. The kernel caps it (net.core.somaxconn).
WEB_LISTEN_BACKLOG = env.int("WEB_LISTEN_BACKLOG", default=1024)
# Whether a Daphne-Root-Path header sets the application's mount point; only
# behind a proxy that sets it (and drops it from clients).
WEB_TRUST_ROOT_PATH_HEADER = env.bool("WEB_TRUST_ROOT_PATH_HEADER", default=False)

# OPENAPI
# ------------------------------------------------------------------------------
SPECTACULAR_SETTINGS = {
    "TITLE": "Realtime payments API",
    "DESCRIPTION": (
        "Create payments and read them back; every status change is also "
        "pushed over the WebSocket /ws/payments/ (frames in the README)."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}
