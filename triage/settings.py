"""Settings for the triage platform, all read from the environment (see README, "Settings")."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlparse

from triage.core.env import (
    SettingError,
    env_bool,
    env_choice,
    env_device,
    env_float,
    env_int,
    env_list,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("TRIAGE_DEBUG", False)
_secret = env_str("SECRET_KEY")
if _secret is None:
    if not DEBUG:
        raise SettingError("SECRET_KEY must be set (or TRIAGE_DEBUG=1 for a development key)")
    _secret = "development-only-key-not-for-production"  # noqa: S105
SECRET_KEY = _secret
ALLOWED_HOSTS = env_list("TRIAGE_ALLOWED_HOSTS", "127.0.0.1,localhost")

INSTALLED_APPS = [
    "daphne",
    "triage.admin_apps.TriageAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "axes",
    "drf_spectacular",
    "channels",
    "django_tasks",
    "django_tasks_db",
    "triage",
    "worklist",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a lockout raised during authentication into a 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "triage.urls"
ASGI_APPLICATION = "triage.asgi.application"
WSGI_APPLICATION = "triage.wsgi.application"

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


def _database_from_url(url: str) -> dict:
    parsed = urlparse(url)
    if parsed.scheme not in {"postgres", "postgresql"}:
        raise SettingError(f"DATABASE_URL scheme {parsed.scheme!r} is not supported (use postgres://)")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parsed.path.lstrip("/")),
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": parsed.hostname or "",
        "PORT": str(parsed.port or ""),
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }


_database_url = env_str("DATABASE_URL")
if _database_url:
    DATABASES = {"default": _database_from_url(_database_url)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("TRIAGE_SQLITE_PATH", str(BASE_DIR / "triage.sqlite3")),
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000;",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "triage.User"

_redis_url = env_str("REDIS_URL")
if _redis_url:
    # Pub/sub: a group message is published once and each server process fans it out to its own sockets, so an
    # event reaches hundreds of worklists in one Redis round trip. Delivery is at most once; worklist clients
    # notice a missed event by its sequence number and reload the snapshot.
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [_redis_url]}}
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

TASKS = {
    "default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default", "ingest", "outbox", "exports"]}
}

# django-axes first: it refuses a locked-out username+address before the password is checked (docs/security.md).
# The admin role carries all model permissions (triage/auth.py).
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "triage.auth.RoleBackend"]
AXES_FAILURE_LIMIT = env_int("TRIAGE_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("TRIAGE_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
# Per username and address together: a wrong password from one place cannot lock a radiologist out everywhere.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Axes keeps its own failure log in the database; its log lines would only repeat usernames and addresses.
AXES_VERBOSE = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
# TLS (README, "Security"): on by default in production, each with an off switch for a plain-HTTP loopback run.
SESSION_COOKIE_SECURE = env_bool("TRIAGE_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env_bool("TRIAGE_SSL_REDIRECT", not DEBUG)
# Health checks answer over plain HTTP for load balancers and `make run`'s own readiness probe.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = env_int("TRIAGE_HSTS_SECONDS", 0 if DEBUG else 31_536_000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("TRIAGE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("TRIAGE_HSTS_PRELOAD", True)
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto (and strips it from clients): TRIAGE_BEHIND_TLS_PROXY=1.
if env_bool("TRIAGE_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# Serve static files straight from static/ so no collectstatic step is needed to run.
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "knox.auth.TokenAuthentication",
    ],
    # Only the token endpoint names a scope; the rate is per client address (docs/security.md).
    "DEFAULT_THROTTLE_RATES": {"token": env_str("TRIAGE_TOKEN_RATE", "20/minute")},
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "triage.core.schema.TriageAutoSchema",
    "EXCEPTION_HANDLER": "triage.core.exceptions.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
}
# API tokens (django-rest-knox): stored as SHA-512 digests, expiring; the header stays "Authorization: Token <t>".
TRIAGE_TOKEN_TTL_HOURS = env_int("TRIAGE_TOKEN_TTL_HOURS", 24 * 30, minimum=1)
REST_KNOX = {
    "TOKEN_TTL": timedelta(hours=TRIAGE_TOKEN_TTL_HOURS),
    "AUTH_HEADER_PREFIX": "Token",
    "AUTO_REFRESH": False,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "CT triage API",
    "DESCRIPTION": "Advisory AI triage of CT studies. Every finding is advisory; a radiologist reads every study.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
}

# Platform settings (the README's settings table).
TRIAGE_HTTP_PORT = env_int("TRIAGE_HTTP_PORT", 8000, minimum=1)
TRIAGE_DICOMWEB_URL = env_str("TRIAGE_DICOMWEB_URL")
TRIAGE_DICOMWEB_USERNAME = env_str("TRIAGE_DICOMWEB_USERNAME")
TRIAGE_DICOMWEB_PASSWORD = env_str("TRIAGE_DICOMWEB_PASSWORD")
TRIAGE_DICOMWEB_TOKEN = env_str("TRIAGE_DICOMWEB_TOKEN")
TRIAGE_FHIR_BASE_URL = env_str("TRIAGE_FHIR_BASE_URL")
TRIAGE_FHIR_VERSION = env_choice("TRIAGE_FHIR_VERSION", "R4", ("R4", "R5"))
TRIAGE_FHIR_TOKEN = env_str("TRIAGE_FHIR_TOKEN")
# Delivery attempts of one report version before it goes to the dead letter (about 5 h at the 10-minute backoff cap).
TRIAGE_OUTBOX_MAX_ATTEMPTS = env_int("TRIAGE_OUTBOX_MAX_ATTEMPTS", 50, minimum=1)
# Results back in the PACS (docs/dicom-sr.md): DICOM SR + key image by STOW-RS to the default source.
TRIAGE_PACS_WRITE_BACK = env_bool("TRIAGE_PACS_WRITE_BACK", False)
TRIAGE_WRITEBACK_MAX_ATTEMPTS = env_int("TRIAGE_WRITEBACK_MAX_ATTEMPTS", 50, minimum=1)
# Teaching screens: the worklist API shows patients' initials instead of their names.
TRIAGE_HIDE_PATIENT_NAMES = env_bool("TRIAGE_HIDE_PATIENT_NAMES", False)
TRIAGE_DEVICE = env_device("TRIAGE_DEVICE", "cpu")
# Threads per inference worker; 0 lets torch use every core (``make run`` shares the cores among its workers).
TRIAGE_TORCH_THREADS = env_int("TRIAGE_TORCH_THREADS", 0, minimum=0)
TRIAGE_MODEL_DIR = env_str("TRIAGE_MODEL_DIR")
TRIAGE_POLL_SECONDS = env_float("TRIAGE_POLL_SECONDS", 10.0, minimum=0.1)

# Operational knobs with safe defaults (README lists them).
TRIAGE_MAX_SERIES_BYTES = env_int("TRIAGE_MAX_SERIES_BYTES", 1_500_000_000, minimum=1)
TRIAGE_MAX_SERIES_INSTANCES = env_int("TRIAGE_MAX_SERIES_INSTANCES", 2000, minimum=1)
# WADO-RS retrieval is read as a stream and stopped at these: one instance (as sent, inflated or as its pixel data
# declares) and one series as sent by the PACS, so a runaway or hostile response never fills a worker's memory.
TRIAGE_MAX_INSTANCE_BYTES = env_int("TRIAGE_MAX_INSTANCE_BYTES", 800_000_000, minimum=1)
TRIAGE_MAX_SERIES_DOWNLOAD_BYTES = env_int("TRIAGE_MAX_SERIES_DOWNLOAD_BYTES", 1_000_000_000, minimum=1)
# One series retrieval, retries included, in wall-clock seconds: the HTTP read timeout holds per chunk only.
TRIAGE_RETRIEVE_DEADLINE_SECONDS = env_float("TRIAGE_RETRIEVE_DEADLINE_SECONDS", 600.0, minimum=1.0)
# Validation exports (docs/validation-export.md): zips of de-identified studies, never served as static files.
TRIAGE_EXPORT_DIR = Path(env_str("TRIAGE_EXPORT_DIR", str(BASE_DIR / ".run" / "exports")) or "")
TRIAGE_JOB_LEASE_SECONDS = env_int("TRIAGE_JOB_LEASE_SECONDS", 120, minimum=1)
TRIAGE_JOB_MAX_ATTEMPTS = env_int("TRIAGE_JOB_MAX_ATTEMPTS", 6, minimum=1)
TRIAGE_HTTP_TIMEOUT_SECONDS = env_float("TRIAGE_HTTP_TIMEOUT_SECONDS", 30.0, minimum=0.1)
# Ingest: quick HTTP retries inside one request, then job-level retries with a longer backoff.
TRIAGE_PACS_HTTP_ATTEMPTS = env_int("TRIAGE_PACS_HTTP_ATTEMPTS", 3, minimum=1)
TRIAGE_PACS_RETRY_BASE_SECONDS = env_float("TRIAGE_PACS_RETRY_BASE_SECONDS", 5.0, minimum=0.0)
TRIAGE_PACS_RETRY_MAX_SECONDS = env_float("TRIAGE_PACS_RETRY_MAX_SECONDS", 600.0, minimum=0.0)
TRIAGE_PACS_MAX_RETRIES = env_int("TRIAGE_PACS_MAX_RETRIES", 50, minimum=1)
# A PACS receives a study instance by instance: triage it once its instance count has not changed for this long.
TRIAGE_STUDY_SETTLE_SECONDS = env_float("TRIAGE_STUDY_SETTLE_SECONDS", 10.0, minimum=0.0)
TRIAGE_POLL_PAGE_SIZE = env_int("TRIAGE_POLL_PAGE_SIZE", 100, minimum=1)
TRIAGE_POLL_OVERLAP_DAYS = env_int("TRIAGE_POLL_OVERLAP_DAYS", 1, minimum=0)
TRIAGE_POLL_LOOKBACK_DAYS = env_int("TRIAGE_POLL_LOOKBACK_DAYS", 7, minimum=0)
TRIAGE_MAX_WAIT_MINUTES = env_int("TRIAGE_MAX_WAIT_MINUTES", 60, minimum=1)
TRIAGE_ACK_TIMEOUT_MINUTES = env_int("TRIAGE_ACK_TIMEOUT_MINUTES", 10, minimum=1)
TRIAGE_VIEWER_URL = env_str("TRIAGE_VIEWER_URL", "")
# The Orthanc (with the Web Viewer plugin) behind /viewer/<study>/: its web root, as the app and browsers reach it.
TRIAGE_VIEWER_ORTHANC_URL = env_str("TRIAGE_VIEWER_ORTHANC_URL")
TRIAGE_ESCALATION_WEBHOOK_URL = env_str("TRIAGE_ESCALATION_WEBHOOK_URL")
TRIAGE_ESCALATION_WEBHOOK_TIMEOUT_SECONDS = env_float("TRIAGE_ESCALATION_WEBHOOK_TIMEOUT_SECONDS", 5.0, minimum=0.1)
# Model alerts: the flag rate of the last N current results per finding is tested against the model card's band.
TRIAGE_FLAG_RATE_WINDOW = env_int("TRIAGE_FLAG_RATE_WINDOW", 20, minimum=10)
# Shadow mode (docs/shadow-mode.md): candidate models' runs and inference seconds per rolling hour; 0 = no cap.
TRIAGE_SHADOW_MAX_PER_HOUR = env_int("TRIAGE_SHADOW_MAX_PER_HOUR", 0, minimum=0)
TRIAGE_SHADOW_MAX_SECONDS_PER_HOUR = env_float("TRIAGE_SHADOW_MAX_SECONDS_PER_HOUR", 0.0, minimum=0.0)
# Absolute address of this app, for links in escalation messages.
TRIAGE_PUBLIC_URL = env_str("TRIAGE_PUBLIC_URL", f"http://127.0.0.1:{TRIAGE_HTTP_PORT}")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("TRIAGE_LOG_LEVEL", "INFO")},
    "loggers": {
        # dicomweb-client logs request URLs with query parameters that can hold patient IDs.
        "dicomweb_client": {"level": "WARNING"},
        # dicomweb-client's retry decorator logs each failed attempt with the exception text, URL included.
        "retrying": {"level": "CRITICAL"},
        "urllib3": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        # At DEBUG (with TRIAGE_DEBUG=1) Django logs every SQL statement with its parameters: patient data.
        "django.db.backends": {"level": "INFO"},
        # django-axes logs every successful login at INFO; lockouts, at WARNING, still show.
        "axes": {"level": "WARNING"},
    },
}
