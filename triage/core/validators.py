"""Field validators of the core models."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError


def validate_regex(value: str) -> None:
    """Model field validator: admins get the regex error in the form instead of a routing failure later."""
    try:
        re.compile(value, re.IGNORECASE)
    except re.error as err:
        raise ValidationError(f"Not a valid regular expression: {err}") from err


# Secrets an admin may point an endpoint at: our own, by name, never the process's own keys.
SECRET_ENV_PATTERN = re.compile(r"TRIAGE_[A-Z0-9_]*_(TOKEN|PASSWORD|SECRET|KEY)")
FORBIDDEN_SECRET_ENV = frozenset({"DATABASE_URL", "SECRET_KEY", "REDIS_URL"})
ALLOWED_URL_SCHEMES = ("http", "https")


def secret_env_problem(name: str) -> str | None:
    """Why ``name`` may not name a secret, or None when it may (blank means "no secret")."""
    if not name:
        return None
    if name in FORBIDDEN_SECRET_ENV or not SECRET_ENV_PATTERN.fullmatch(name):
        return (
            f"{name!r} is not an allowed secret name: use an environment variable named "
            "TRIAGE_<…>_TOKEN, _PASSWORD, _SECRET or _KEY (capitals, digits and underscores)."
        )
    return None


def validate_secret_env(value: str) -> None:
    """Model field validator: an endpoint can only send secrets meant for it, never DATABASE_URL or SECRET_KEY."""
    problem = secret_env_problem(value)
    if problem:
        raise ValidationError(problem)


def url_problem(url: str) -> str | None:
    """Why ``url`` may not be an endpoint, or None when it may: http or https with a host."""
    if not url:
        return None
    parsed = urlsplit(url)
    if parsed.scheme.lower() not in ALLOWED_URL_SCHEMES or not parsed.hostname:
        return "Only http:// and https:// URLs with a host name are allowed."
    return None


def validate_endpoint_url(value: str) -> None:
    """Model field validator for PACS and EMR addresses."""
    problem = url_problem(value)
    if problem:
        raise ValidationError(problem)
