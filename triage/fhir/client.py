"""HTTP to an EMR's FHIR endpoint: authentication (bearer, basic, SMART Backend Services), timeouts, TLS.

Secrets come from the environment variable an endpoint names (``<NAME>_FILE`` works too); they are never stored,
logged or put in an error message. SMART access tokens are cached per endpoint until shortly before they expire.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from triage.core.env import env_str
from triage.core.exceptions import TriageError
from triage.core.validators import secret_env_problem, url_problem
from triage.models import FhirAuth, FhirEndpoint

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
TOKEN_EXPIRY_MARGIN_SECONDS = 30.0
ASSERTION_LIFETIME_SECONDS = 300  # SMART Backend Services: no more than five minutes


class FhirAuthError(TriageError):
    """Credentials are missing, or the token endpoint refused or failed. ``retryable`` when it may pass."""

    code = "fhir_auth"
    status = 502

    def __init__(self, message: str, *, retryable: bool, status_code: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code


@dataclass
class _CachedToken:
    value: str
    expires_at: float


_tokens: dict[tuple[int, str, str], _CachedToken] = {}
_tokens_lock = threading.Lock()
_sessions: dict[int, requests.Session] = {}
_sessions_lock = threading.Lock()


def _secret(endpoint: FhirEndpoint) -> str:
    name = endpoint.secret_env or ("TRIAGE_FHIR_TOKEN" if endpoint.name == "default" else "")
    problem = secret_env_problem(name)
    if problem:
        # Checked here too: a row written past the model validator must not send the database password away.
        raise FhirAuthError(f"Endpoint {endpoint.name!r}: {problem}", retryable=False)
    value = env_str(name) if name else None
    if not value:
        raise FhirAuthError(
            f"Endpoint {endpoint.name!r} needs a secret in the environment variable {name or '(none named)'}",
            retryable=False,
        )
    return value


def _timeout(endpoint: FhirEndpoint) -> tuple[float, float]:
    seconds = max(0.1, float(endpoint.timeout_seconds))
    return (min(5.0, seconds), seconds)


def session_for(endpoint: FhirEndpoint) -> requests.Session:
    """One pooled session per endpoint and process: keep-alive matters at hundreds of reports a second."""
    with _sessions_lock:
        session = _sessions.get(endpoint.pk)
        if session is None:
            session = requests.Session()
            session.headers.update({"Accept": FHIR_JSON, "Content-Type": FHIR_JSON})
            _sessions[endpoint.pk] = session
        return session


def token_cache_clear(endpoint: FhirEndpoint | None = None) -> None:
    with _tokens_lock:
        if endpoint is None:
            _tokens.clear()
            return
        for key in [k for k in _tokens if k[0] == endpoint.pk]:
            del _tokens[key]


def auth_headers(endpoint: FhirEndpoint) -> dict[str, str]:
    if endpoint.auth == FhirAuth.NONE:
        return {}
    if endpoint.auth == FhirAuth.BEARER:
        return {"Authorization": f"Bearer {_secret(endpoint)}"}
    if endpoint.auth == FhirAuth.BASIC:
        pair = f"{endpoint.username}:{_secret(endpoint)}".encode()
        return {"Authorization": f"Basic {base64.b64encode(pair).decode('ascii')}"}
    if endpoint.auth == FhirAuth.SMART:
        return {"Authorization": f"Bearer {smart_access_token(endpoint)}"}
    raise FhirAuthError(f"Endpoint {endpoint.name!r} has an unknown auth mode {endpoint.auth!r}", retryable=False)


def _signing_algorithm(pem: str) -> tuple[Any, str]:
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except ValueError as err:
        raise FhirAuthError("The SMART private key is not a PEM private key", retryable=False) from err
    if isinstance(key, rsa.RSAPrivateKey):
        return key, "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key, "ES384"
    raise FhirAuthError("The SMART private key must be RSA (RS384) or EC (ES384)", retryable=False)


def client_assertion(endpoint: FhirEndpoint) -> str:
    """The signed JWT a SMART Backend Services client presents instead of a client secret."""
    key, algorithm = _signing_algorithm(_secret(endpoint))
    now = int(time.time())
    claims = {
        "iss": endpoint.client_id,
        "sub": endpoint.client_id,
        "aud": endpoint.token_url,
        "exp": now + ASSERTION_LIFETIME_SECONDS,
        "iat": now,
        "jti": str(uuid.uuid4()),
    }
    headers = {"typ": "JWT", **({"kid": endpoint.jwt_key_id} if endpoint.jwt_key_id else {})}
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def smart_access_token(endpoint: FhirEndpoint) -> str:
    key = (endpoint.pk, endpoint.token_url, endpoint.client_id)
    with _tokens_lock:
        cached = _tokens.get(key)
        if cached is not None and cached.expires_at > time.monotonic():
            return cached.value
    token = _smart_token_request(endpoint)
    with _tokens_lock:
        _tokens[key] = token
    return token.value


def _smart_token_request(endpoint: FhirEndpoint) -> _CachedToken:
    if not endpoint.token_url or not endpoint.client_id:
        raise FhirAuthError(f"Endpoint {endpoint.name!r} needs a token URL and a client id", retryable=False)
    problem = url_problem(endpoint.token_url)
    if problem:
        raise FhirAuthError(f"Endpoint {endpoint.name!r}: token URL: {problem}", retryable=False)
    form = {
        "grant_type": "client_credentials",
        "scope": endpoint.scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": client_assertion(endpoint),
    }
    try:
        response = requests.post(
            endpoint.token_url, data=form, timeout=_timeout(endpoint), verify=endpoint.verify_tls, allow_redirects=False
        )
    except requests.RequestException as err:
        raise FhirAuthError(f"Token endpoint unreachable ({type(err).__name__})", retryable=True) from err
    if response.status_code != 200:
        retryable = response.status_code >= 500 or response.status_code == 429
        raise FhirAuthError(
            f"Token endpoint answered {response.status_code}", retryable=retryable, status_code=response.status_code
        )
    try:
        body = response.json()
        value = str(body["access_token"])
        lifetime = float(body.get("expires_in", 300))
    except (ValueError, KeyError, TypeError) as err:
        raise FhirAuthError("Token endpoint answered without an access token", retryable=True) from err
    expires_at = time.monotonic() + max(0.0, lifetime - TOKEN_EXPIRY_MARGIN_SECONDS)
    logger.info("SMART token obtained for endpoint %s, valid %.0f s", endpoint.name, lifetime)
    return _CachedToken(value=value, expires_at=expires_at)


def fhir_request(
    endpoint: FhirEndpoint, method: str, path: str, *, json_body: Any = None, params: dict | None = None
) -> requests.Response:
    """One request to the endpoint with its auth, timeout and TLS policy. Raises requests/FhirAuth errors."""
    problem = url_problem(endpoint.base_url) if endpoint.base_url else "No base URL."
    if problem:
        raise FhirAuthError(f"Endpoint {endpoint.name!r}: {problem}", retryable=False)
    url = f"{endpoint.base_url.rstrip('/')}/{path.lstrip('/')}" if path else endpoint.base_url.rstrip("/")
    return session_for(endpoint).request(
        method,
        url,
        json=json_body,
        params=params,
        headers=auth_headers(endpoint),
        timeout=_timeout(endpoint),
        verify=endpoint.verify_tls,
        allow_redirects=False,
    )
