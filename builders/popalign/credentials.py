"""Endpoint credentials: taken out of URLs, and sent only where they belong.

A URL may carry a credential (`http://user:password@host`, or `?api_key=KEY`): it is removed from the URL that is
stored, printed, cached or published, and sent only as the request's `Authorization` header. The Hugging Face
token (`HF_TOKEN` or the saved login) goes only to Hugging Face hosts; any other endpoint gets a key only from
`--token`, its URL, or its role's `api_key_env`.
"""

from __future__ import annotations

import base64
import os
import re
from urllib.parse import parse_qsl, unquote, urlsplit

from huggingface_hub import constants, get_token

from popalign.errors import ConfigError

#: Query parameters that hold a key rather than a setting.
KEY_PARAMETERS = ("api_key", "apikey", "key", "token", "access_token")
HUGGING_FACE_DOMAINS = ("huggingface.co", "hf.co", "huggingface.cloud", "hf.space")
#: What comes before a URL's authority, written rightly or not (`http://`, `http//`, `http:/`, none).
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:?/+")


def split_credentials(url: str) -> tuple[str, str | None]:
    """The URL without credentials, and the `Authorization` header value its credentials make (or None).

    >>> split_credentials("http://alice:pw@host:8080/")
    ('http://host:8080', 'Basic YWxpY2U6cHc=')
    >>> split_credentials("https://host/v1?api_key=k")
    ('https://host/v1', 'Bearer k')
    """
    clean = redacted(url)
    check_user_part(url)
    parts = urlsplit(url.strip())
    header = None
    if parts.username is not None or parts.password is not None:
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        header = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name.lower() not in KEY_PARAMETERS:
            raise ConfigError(f"endpoint {clean}: unsupported query parameter {name!r} (only a key: api_key=...)")
        if header is not None:
            raise ConfigError(f"endpoint {clean}: give one credential, in the URL's user part or as {name}=")
        header = f"Bearer {value}"
    return clean, header


def redacted(url: str) -> str:
    """`url` as it may be shown or stored: without its user part, query string and fragment, found however the URL
    is written (a `#` or `?` in a password, a scheme mistyped), before anything parses it.

    >>> redacted("http://alice:pw@host:8080/v1?api_key=k"), redacted("http//alice:p#w@host")
    ('http://host:8080/v1', 'http//host')
    """
    prefix, _, rest = _user_split(url)
    return (prefix + rest).split("?")[0].split("#")[0].rstrip("/")


def _user_split(url: str) -> tuple[str, str, str]:
    """A URL as its scheme (written rightly or not), its user part (up to the last `@` before the first `/` after
    the scheme), and the rest from its host on; found before anything parses it."""
    text = url.strip()
    scheme = _SCHEME.match(text)
    prefix = scheme.group(0) if scheme else ""
    authority, slash, path = text[len(prefix) :].partition("/")
    user, _, host = authority.rpartition("@")
    return prefix, user, host + slash + path


def check_user_part(url: str) -> None:
    """Refuse a URL whose user part (what `redacted` takes out before its host) holds a `#` or `?`, which any URL
    parser reads as the start of its fragment or query, sending a wrong credential to a wrong host.

    Raises:
        ConfigError: naming the URL without its credentials.
    """
    user = _user_split(url)[1]
    if "#" in user or "?" in user:
        raise ConfigError(f"endpoint {redacted(url)}: its user part holds '#' or '?'; write them as %23 and %3F")


def is_hugging_face_host(url: str) -> bool:
    """Whether `url` is on a Hugging Face domain (the Hub, Inference Endpoints, Spaces) or is `HF_ENDPOINT`'s
    origin: its scheme, host and port alike (another port of `HF_ENDPOINT`'s host is another server).

    >>> is_hugging_face_host("https://router.huggingface.co/v1"), is_hugging_face_host("http://127.0.0.1:9")
    (True, False)
    """
    host = (urlsplit(url).hostname or "").lower()
    return _origin(url) == _origin(constants.ENDPOINT) or any(
        host == domain or host.endswith("." + domain) for domain in HUGGING_FACE_DOMAINS
    )


def _origin(url: str) -> tuple[str, str, int | None]:
    """A URL's scheme, host and port (the scheme's default port when none is written)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # not a port: no origin to match
        return scheme, "", None
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def authorization(
    url: str, *, url_credential: str | None, token: str | None, api_key_env: str | None = None
) -> str | None:
    """The `Authorization` header for one endpoint URL, by precedence: the role's `api_key_env`, the URL's own
    credential, the explicit `--token`, and the Hugging Face token for Hugging Face hosts only."""
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise ConfigError(f"endpoint {url}: api_key_env {api_key_env} is not set")
        return f"Bearer {key}"
    if url_credential:
        return url_credential
    if token:
        return f"Bearer {token}"
    hub_token = get_token() if is_hugging_face_host(url) else None
    return f"Bearer {hub_token}" if hub_token else None
