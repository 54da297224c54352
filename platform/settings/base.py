"""Settings shared by every environment. Each value comes from the environment (django-environ);
the README lists them all with their defaults. Malformed values raise ImproperlyConfigured."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import environ
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from .environment import StrictEnv

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = StrictEnv()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
# Earlier keys, still accepted while DJANGO_SECRET_KEY is rotated (signed values, sealed secrets:
# `common/sealed.py`), comma-separated.
SECRET_KEY_FALLBACKS = env.list("DJANGO_SECRET_KEY_FALLBACKS", default=[])
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

VAR_DIR = Path(env.str("PLATFORM_VAR_DIR", default=str(BASE_DIR / "var")))

INSTALLED_APPS = [
    "admin_interface",
    "colorfield",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt",
    "oauth2_provider",
    "drf_spectacular",
    "common",
    "accounts",
    "usage",
    "inference",
    "knowledge",
    "billing",
    "console",
    "webhooks",
]

# The order is the request pipeline's contract: request id and error shaping wrap everything;
# then API authentication and admission (token counting, rate limits, budget), before the view.
MIDDLEWARE = [
    "common.middleware.RequestIDMiddleware",
    "common.middleware.APIErrorMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "common.middleware.SiteMiddleware",  # SITE_MIDDLEWARE, outside /api/ and /v1/ only
    "accounts.middleware.APIAuthenticationMiddleware",
    "usage.middleware.AdmissionMiddleware",  # token counting, rate limits and budgets
]
# The admin's and the HTML pages' middlewares; API requests (header credentials) skip them.
SITE_MIDDLEWARE = [
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# The admin checks look for these in MIDDLEWARE; they run, through SiteMiddleware, on every admin
# request (tests/test_site_middleware.py).
SILENCED_SYSTEM_CHECKS = ["admin.E408", "admin.E409", "admin.E410"]

ROOT_URLCONF = "platform.urls"
WSGI_APPLICATION = "platform.wsgi.application"
AUTH_USER_MODEL = "accounts.User"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# psycopg's connection pool, one per process (PostgreSQL only; 0: none, each thread keeps its
# own connection for DATABASE_CONN_MAX_AGE). A request holds a connection from its first query
# until it ends, a stream included, so a process needs as many as it has threads that query;
# the README sizes it per process type.
DATABASE_POOL_MAX_SIZE = env.int("DATABASE_POOL_MAX_SIZE", default=0)
DATABASE_POOL_MIN_SIZE = env.int("DATABASE_POOL_MIN_SIZE", default=min(2, DATABASE_POOL_MAX_SIZE))
DATABASE_POOL_TIMEOUT = env.float("DATABASE_POOL_TIMEOUT", default=10.0)
if DATABASE_POOL_MAX_SIZE and DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    if not 0 <= DATABASE_POOL_MIN_SIZE <= DATABASE_POOL_MAX_SIZE:
        raise ImproperlyConfigured("DATABASE_POOL_MIN_SIZE must be between 0 and DATABASE_POOL_MAX_SIZE.")
    if env.int("DATABASE_CONN_MAX_AGE", default=0):
        raise ImproperlyConfigured("DATABASE_CONN_MAX_AGE must be 0 (or unset) with DATABASE_POOL_MAX_SIZE.")
    # Django returns a connection to the pool when a request ends; it refuses persistent ones.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": DATABASE_POOL_MIN_SIZE,
        "max_size": DATABASE_POOL_MAX_SIZE,
        "timeout": DATABASE_POOL_TIMEOUT,
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while a background thread writes.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")
# A Redis Cluster (`host:port,host:port,...`) for everything that coordinates processes (ledger,
# rate limits, caches, key invalidation) instead of REDIS_URL, which then serves Celery only.
REDIS_CLUSTER_NODES = env.addresses("REDIS_CLUSTER_NODES")
# Its credentials (an ACL user, or the `requirepass` password alone) and TLS, as a managed cluster
# asks for; the CA file, when the nodes' certificates are not signed by one the system trusts.
REDIS_CLUSTER_USERNAME = env.str("REDIS_CLUSTER_USERNAME", default="")
REDIS_CLUSTER_PASSWORD = env.str("REDIS_CLUSTER_PASSWORD", default="")
REDIS_CLUSTER_TLS = env.bool("REDIS_CLUSTER_TLS", default=False)
REDIS_CLUSTER_TLS_CA_FILE = env.str("REDIS_CLUSTER_TLS_CA_FILE", default="")
CACHE_KEY_PREFIX = env.str("CACHE_KEY_PREFIX", default="llmp")
if "{" in CACHE_KEY_PREFIX or "}" in CACHE_KEY_PREFIX:
    # The ledger's keys carry a Redis Cluster hash tag after the prefix; a brace in the prefix
    # would become the tag and put every key in one slot.
    raise ImproperlyConfigured("CACHE_KEY_PREFIX must not contain braces.")
if REDIS_CLUSTER_NODES:
    CACHES = {
        "default": {
            "BACKEND": "common.cache.ClusterRedisCache",
            "LOCATION": REDIS_CLUSTER_NODES,
            "KEY_PREFIX": CACHE_KEY_PREFIX,
        }
    }
elif REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "common.cache.ReusingRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": CACHE_KEY_PREFIX,
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "llm-platform",
        }
    }

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=REDIS_URL or None)
# Without a broker, tasks run in the calling process: the embedded default of `make run`.
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# A task whose worker died is redelivered after this long (acks_late): longer than any task runs.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=1800)}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.PipelineAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["accounts.permissions.HasRequiredScope"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "common.parsers.BoundedJSONParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "EXCEPTION_HANDLER": "common.exception_handler.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": None,
    # `format` is the usage report's own parameter (json or csv), not DRF's renderer switch.
    "URL_FORMAT_OVERRIDE": None,
    # Proxies in front of the web server: the client's address for sign-in throttling is then
    # read from X-Forwarded-For (never trusted without this: anyone can send it).
    "NUM_PROXIES": env.int("TRUSTED_PROXY_COUNT", default=0) or None,
}

# Sign-in throttling (/api/v1/auth/token/, /oauth/token/), failures per window.
AUTH_THROTTLE_WINDOW_SECONDS = env.int("AUTH_THROTTLE_WINDOW_SECONDS", default=60)
AUTH_THROTTLE_ACCOUNT_FAILURES = env.int("AUTH_THROTTLE_ACCOUNT_FAILURES", default=5)
AUTH_THROTTLE_IP_FAILURES = env.int("AUTH_THROTTLE_IP_FAILURES", default=20)

# Self-service sign-up (/api/v1/signup/): off unless set (development and tests turn it on).
# Attempts per client address per window, successful ones included: each creates an
# organization or costs a password hash.
SIGNUP_ENABLED = env.bool("SIGNUP_ENABLED", default=False)
SIGNUP_THROTTLE_WINDOW_SECONDS = env.int("SIGNUP_THROTTLE_WINDOW_SECONDS", default=3600)
SIGNUP_THROTTLE_IP_ATTEMPTS = env.int("SIGNUP_THROTTLE_IP_ATTEMPTS", default=10)

# Self-service: invitations, and the emails that carry them (console by default; EMAIL_URL as
# django-environ reads it, e.g. smtp+tls://user:password@smtp.example.com:587).
INVITATION_TTL_SECONDS = env.int("INVITATION_TTL_SECONDS", default=7 * 24 * 3600)
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="LLM Platform <noreply@localhost>")
# Where links in emails point (scheme and host); empty: the host of the request that sent them.
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="")

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_MINUTES", default=15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_DAYS", default=7)),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "USER_ID_FIELD": "id",
    "USER_ID_CLAIM": "user_id",
}

OAUTH2_PROVIDER = {
    "SCOPES": {
        "generate": "Generate text",
        "rag": "Ask questions over the organization's documents",
        "documents:read": "List and read documents",
        "documents:write": "Upload and delete documents",
        "usage:read": "Read usage reports",
        "billing:read": "Read invoices and costs",
        "billing:write": "Change the plan and payment methods",
        "organization:read": "List the organization's keys, members and budgets",
        "organization:write": "Manage the organization's keys, members and budgets",
    },
    "ACCESS_TOKEN_EXPIRE_SECONDS": env.int("OAUTH2_ACCESS_TOKEN_SECONDS", default=3600),
    "SCOPES_BACKEND_CLASS": "accounts.oauth.OrganizationScopes",
    # Only the client-credentials grant is used; everything RFC 9700 (OAuth 2.0 Security BCP)
    # recommends is enforced, so no other grant or insecure transport is reachable.
    "PKCE_REQUIRED": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    "ALLOWED_REDIRECT_URI_SCHEMES": ["https"],
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,
    "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": True,
    # Store only a checksum of access tokens, never the tokens themselves.
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
    "COMPLIANT_BCP_RFC9700_REFRESH_TOKEN": True,
    "COMPLIANT_BCP_RFC9700_REDIRECT_URI_SCHEME": True,
    "COMPLIANT_BCP_RFC9700_REDIRECT_URI_MATCHING": True,
    "COMPLIANT_BCP_RFC9700_PKCE_REQUIRED": True,
}

OAUTH2_PROVIDER_APPLICATION_MODEL = "oauth2_provider.Application"
OAUTH2_PROVIDER_ACCESS_TOKEN_MODEL = "oauth2_provider.AccessToken"
OAUTH2_PROVIDER_REFRESH_TOKEN_MODEL = "oauth2_provider.RefreshToken"
OAUTH2_PROVIDER_ID_TOKEN_MODEL = "oauth2_provider.IDToken"
OAUTH2_PROVIDER_GRANT_MODEL = "oauth2_provider.Grant"

SPECTACULAR_SETTINGS = {
    "TITLE": "LLM Platform API",
    "DESCRIPTION": (
        "Multi-tenant LLM gateway: generation, OpenAI-compatible routes, per-tenant RAG, "
        "quotas, usage and billing. Authenticate with an API key, a JWT or an OAuth2 token."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Request bodies are documented as JSON only (a view that takes a file names its media types
    # itself). The multipart parser stays on for uploads, but a form cannot carry what these
    # bodies hold (null, lists of objects), so documenting it would promise what fails.
    "PARSER_WHITELIST": ["common.parsers.BoundedJSONParser"],
    # A document's status appears in two components (a document, and an upload's answer).
    "ENUM_NAME_OVERRIDES": {
        "DocumentStatusEnum": "knowledge.models.Document.Status",
        # A member's role, beside a chat message's (MessageRoleEnum): two fields named `role`. As
        # the serializers give them (Membership.Role.values: each value its own label).
        "MemberRoleEnum": [(role, role) for role in ("owner", "admin", "member", "reader")],
    },
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "common.openapi.add_error_responses",
    ],
}

# API key lookups are cached in the shared cache so that authentication costs no database
# query; every change to a key or its organization deletes the entry.
# Python's GIL switch interval in the web workers (platform/wsgi.py); Python's default is 5.
WEB_GIL_SWITCH_INTERVAL_MS = env.float("WEB_GIL_SWITCH_INTERVAL_MS", default=50.0)
API_KEY_CACHE_SECONDS = env.int("API_KEY_CACHE_SECONDS", default=300)
# Each process also keeps resolved keys, dropped on every invalidation (accounts.keycache).
API_KEY_LOCAL_CACHE_SECONDS = env.int("API_KEY_LOCAL_CACHE_SECONDS", default=60)
API_KEY_LAST_USED_RESOLUTION_SECONDS = env.int("API_KEY_LAST_USED_RESOLUTION_SECONDS", default=60)

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "common.logging.RequestIDFilter"}},
    "formatters": {"json": {"()": "common.logging.JSONFormatter"}},
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"level": "WARNING"},
        "django.request": {"level": "ERROR"},
        "httpx": {"level": "WARNING"},
        "faiss.loader": {"level": "WARNING"},
    },
}

# /metrics: an allow-listed address or the bearer token.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_ADDRESSES = frozenset(env.list("METRICS_ALLOWED_ADDRESSES", default=["127.0.0.1", "::1"]))

# Quotas.
BUDGET_SOFT_THRESHOLD = env.float("BUDGET_SOFT_THRESHOLD", default=0.8)
# A running reservation is extended by its process every third of this; one whose process died
# expires after it and is charged what it held (usage.keeper).
RESERVATION_TTL_SECONDS = env.int("RESERVATION_TTL_SECONDS", default=120)
# How long a queued job may wait for a worker while its budget is held for it.
JOB_MAX_WAIT_SECONDS = env.int("JOB_MAX_WAIT_SECONDS", default=3600)
TOKEN_ESTIMATE_ENCODING = env.str("TOKEN_ESTIMATE_ENCODING", default="cl100k_base")
DEFAULT_MAX_TOKENS = env.int("DEFAULT_MAX_TOKENS", default=256)

# Hostile input: what one request may carry, each over-limit field a 400 that names it.
# A prompt (generate/, completions, rag/) or all of a chat's messages together, in characters:
# about 50,000 tokens of English, more than the default model's context holds.
MAX_PROMPT_CHARS = env.int("MAX_PROMPT_CHARS", default=200_000)
MAX_MESSAGES = env.int("MAX_MESSAGES", default=2048)  # as OpenAI's chat completions
MAX_STOP_SEQUENCES = env.int("MAX_STOP_SEQUENCES", default=4)
# The engine matches every stop string against the tail of the output after each token.
MAX_STOP_CHARS = env.int("MAX_STOP_CHARS", default=64)
# The largest valid body is a prompt or messages at MAX_PROMPT_CHARS that the client escaped as
# \uXXXX (6 bytes a character: Python's json and requests do, for anything not ASCII), 1.2 MB,
# plus the other fields; a larger JSON body cannot be valid and is refused from its declared
# Content-Length before it is read (413). Django applies it to every body it reads into memory
# (DATA_UPLOAD_MAX_MEMORY_SIZE), so a JSON document upload is bounded by it too; larger
# documents go as a multipart file, which streams to disk (KNOWLEDGE_MAX_UPLOAD_BYTES).
API_MAX_JSON_BODY_BYTES = env.int("API_MAX_JSON_BODY_BYTES", default=2 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_JSON_BODY_BYTES
# An uploaded file larger than this is streamed to a temporary file, not held in memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = env.int("FILE_UPLOAD_MAX_MEMORY_SIZE", default=2_621_440)

CELERY_BEAT_SCHEDULE = {
    "flush-usage": {"task": "usage.flush_stream", "schedule": env.float("USAGE_FLUSH_SECONDS", default=2.0)},
    "expire-reservations": {"task": "usage.expire_reservations", "schedule": 30.0},
}

# Inference. The default model is the small one the repository trains and ships.
# Several models, each on one or more servers, with failover: a registry file (YAML or TOML,
# inference/engine/registry.py); it replaces the single model the LLM_* settings below describe
# (the engine settings — device, batch size, timeouts, retries — still apply to its deployments).
LLM_MODELS_FILE = env.str("LLM_MODELS_FILE", default="")
LLM_BACKEND = env.str("LLM_BACKEND", default="local")
LLM_MODEL = env.str("LLM_MODEL", default=str(BASE_DIR / "inference" / "default_model"))
LLM_SERVED_MODEL_NAME = env.str("LLM_SERVED_MODEL_NAME", default="")
LLM_BASE_URL = env.str("LLM_BASE_URL", default="")
LLM_API_KEY = env.str("LLM_API_KEY", default="")
LLM_DEVICE = env.str("LLM_DEVICE", default="auto")
LLM_MAX_BATCH_SIZE = env.int("LLM_MAX_BATCH_SIZE", default=32)
LLM_TORCH_THREADS = env.int("LLM_TORCH_THREADS", default=0)
LLM_LOAD_TIMEOUT_SECONDS = env.float("LLM_LOAD_TIMEOUT_SECONDS", default=120.0)
LLM_REQUEST_TIMEOUT_SECONDS = env.float("LLM_REQUEST_TIMEOUT_SECONDS", default=300.0)
LLM_MAX_RETRIES = env.int("LLM_MAX_RETRIES", default=2)
# The model's context in tokens, for a backend that cannot tell (an openai upstream); unset, a
# local model's own is used and a remote one's is unknown (nothing is fitted to it).
LLM_CONTEXT_LENGTH: int | None = env.int("LLM_CONTEXT_LENGTH", default=None)
LLM_WARMUP = env.bool("LLM_WARMUP", default=False)
EMBEDDING_MODEL = env.str("EMBEDDING_MODEL", default="")

# Knowledge (RAG).
KNOWLEDGE_INDEX_DIR = Path(env.str("KNOWLEDGE_INDEX_DIR", default=str(VAR_DIR / "indexes")))
KNOWLEDGE_MAX_UPLOAD_BYTES = env.int("KNOWLEDGE_MAX_UPLOAD_BYTES", default=20 * 1024 * 1024)
KNOWLEDGE_APPROXIMATE_THRESHOLD = env.int("KNOWLEDGE_APPROXIMATE_THRESHOLD", default=20_000)
KNOWLEDGE_EMBED_BATCH = env.int("KNOWLEDGE_EMBED_BATCH", default=32)
KNOWLEDGE_CHUNK_OVERLAP_TOKENS = env.int("KNOWLEDGE_CHUNK_OVERLAP_TOKENS", default=32)
# A document whose ingestion shows no progress for this long is taken as abandoned (its worker
# died) and queued again, up to KNOWLEDGE_MAX_ATTEMPTS times.
KNOWLEDGE_STALE_SECONDS = env.int("KNOWLEDGE_STALE_SECONDS", default=300)
KNOWLEDGE_MAX_ATTEMPTS = env.int("KNOWLEDGE_MAX_ATTEMPTS", default=3)
# The embedding model reads 256 word pieces (1,000 to 1,500 characters of English) and ignores
# the rest, so a longer search query changes nothing but its cost.
KNOWLEDGE_MAX_QUERY_CHARS = env.int("KNOWLEDGE_MAX_QUERY_CHARS", default=4_000)
KNOWLEDGE_MAX_DOCUMENT_IDS = env.int("KNOWLEDGE_MAX_DOCUMENT_IDS", default=100)
# Spend alerts (billing.alerts): how often beat checks the organizations with recent usage.
SPEND_ALERT_SECONDS = env.int("SPEND_ALERT_SECONDS", default=60)
CELERY_BEAT_SCHEDULE["spend-alerts"] = {
    "task": "billing.spend_alerts",
    "schedule": float(SPEND_ALERT_SECONDS),
}
CELERY_BEAT_SCHEDULE["webhook-retries"] = {"task": "webhooks.deliver_due", "schedule": 15.0}
# Tenant webhooks: a private address is refused unless this is set (tests set it: their
# receivers are on loopback).
WEBHOOK_ALLOW_PRIVATE = env.bool("WEBHOOK_ALLOW_PRIVATE", default=False)
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10.0)
WEBHOOK_FIRST_RETRY_SECONDS = env.int("WEBHOOK_FIRST_RETRY_SECONDS", default=30)
WEBHOOK_RETRY_HOURS = env.int("WEBHOOK_RETRY_HOURS", default=24)
CELERY_BEAT_SCHEDULE["recover-ingestion"] = {"task": "knowledge.recover_stale", "schedule": 60.0}

# Billing.
BILLING_CURRENCY = env.str("BILLING_CURRENCY", default="usd")
BILLING_GRACE_DAYS = env.int("BILLING_GRACE_DAYS", default=7)
STRIPE_API_KEY = env.str("STRIPE_API_KEY", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
# What the console's card form loads: Stripe.js and the publishable key (localstripe's
# `<STRIPE_API_BASE>/js.stripe.com/v3/` stands in for Stripe.js in tests and development).
STRIPE_PUBLISHABLE_KEY = env.str("STRIPE_PUBLISHABLE_KEY", default="")
STRIPE_JS_URL = env.str("STRIPE_JS_URL", default="https://js.stripe.com/v3/")
# The plan (slug) a new organization signs up on; empty: none. DEFAULT_PLAN_AUTO_CREATE makes
# `migrate` create it, free, when it is missing (development).
DEFAULT_PLAN = env.str("DEFAULT_PLAN", default="")
DEFAULT_PLAN_AUTO_CREATE = env.bool("DEFAULT_PLAN_AUTO_CREATE", default=False)
CELERY_BEAT_SCHEDULE.update(
    {
        "bill-previous-month": {
            "task": "billing.bill_previous_month",
            "schedule": crontab(minute=0, hour=2, day_of_month=1),
        },
        "activate-plan-changes": {
            "task": "billing.activate_plan_changes",
            "schedule": crontab(minute=5, hour="*"),
        },
        "suspend-past-due": {"task": "billing.suspend_past_due", "schedule": crontab(minute=15, hour="*")},
    }
)
