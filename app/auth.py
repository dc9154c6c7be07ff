"""Gateway keys: who is calling.

Keys are looked up by their SHA-256 digest, so a wrong key costs the same dict lookup as a right
one and no comparison leaks timing. With no keys configured at all the gateway is a local proxy:
every caller is the client `local` (the bind address check in the CLI keeps that to loopback).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping

from starlette.datastructures import Headers

from app.clients import LOCAL_CLIENT, Client
from app.config_sections import ClientSettings
from app.errors import InvalidApiKey
from app.ledger.protocol import StoredKey

KEY_PREFIX = "mgw_"


def new_key() -> str:
    """A fresh gateway key: `mgw_` and 43 URL-safe random characters."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def authorization(headers: Mapping[str, str]) -> str:
    """The one Authorization header of a request ("" if none); InvalidApiKey if it has several,
    since which one counts would be a guess that a proxy in between may have made differently."""
    if not isinstance(headers, Headers):
        return headers.get("authorization", "")
    values = headers.getlist("authorization")
    if len(values) > 1:
        raise InvalidApiKey(
            f"{len(values)} Authorization headers were sent: send exactly one, "
            "'Authorization: Bearer <key>'"
        )
    return values[0] if values else ""


class KeyStore:
    """Digest -> Client, from the config file and from keys created with `keys create`."""

    def __init__(self, configured: Mapping[str, ClientSettings]) -> None:
        self._configured = _clients(configured)
        self._stored: dict[str, Client] = {}
        self._by_digest = dict(self._configured)
        # Once any key has existed, stay closed: revoking the last key must not turn a gateway
        # that required keys (perhaps on a public address) into an open proxy until restart.
        self._keyed = bool(self._by_digest)

    @property
    def open_mode(self) -> bool:
        """True while no key has ever existed: every caller is the local client."""
        return not self._keyed

    def clients(self) -> list[Client]:
        """Every client that has a key now."""
        return list(self._by_digest.values())

    def replace_stored(self, stored: Iterable[StoredKey]) -> None:
        """Swap in the current set of database keys (revocations take effect here)."""
        self._stored = {key.key_sha256: Client(key.name, key.spec) for key in stored}
        self._merge()

    def replace_configured(self, configured: Mapping[str, ClientSettings]) -> None:
        """Swap in the clients of a reloaded config file."""
        self._configured = _clients(configured)
        self._merge()

    def _merge(self) -> None:
        self._by_digest = {**self._configured, **self._stored}
        self._keyed = self._keyed or bool(self._by_digest)

    def authenticate(self, headers: Mapping[str, str]) -> Client:
        """The calling client, or InvalidApiKey (also for two Authorization headers)."""
        if not self._keyed:
            return LOCAL_CLIENT
        scheme, _, token = authorization(headers).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidApiKey(
                "missing gateway key: send 'Authorization: Bearer mgw_...' "
                "(ask the gateway operator for a key)"
            )
        client = self._by_digest.get(key_digest(token.strip()))
        if client is None:
            raise InvalidApiKey("unknown or revoked gateway key")
        return client


def _clients(configured: Mapping[str, ClientSettings]) -> dict[str, Client]:
    return {s.key_sha256: Client(name, s.spec()) for name, s in configured.items()}
