"""Gateway keys: who is calling.

Keys are looked up by their SHA-256 digest, so a wrong key costs the same dict lookup as a right
one and no comparison leaks timing. With no keys configured at all the gateway is a local proxy:
every caller is the client `local` (the bind address check in the CLI keeps that to loopback).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping

from app.config import ClientSettings
from app.errors import InvalidApiKey
from app.routing import LOCAL_CLIENT, Client

KEY_PREFIX = "mgw_"


def new_key() -> str:
    """A fresh gateway key: `mgw_` and 43 URL-safe random characters."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def client_from_settings(name: str, settings: ClientSettings) -> Client:
    """The Client a `[clients.NAME]` table describes."""
    return Client(
        name=name,
        persona_id=settings.persona_id,
        allow_persona_override=settings.allow_persona_override,
        credit_budget=settings.credit_budget,
        budget_period=settings.budget_period,
        rpm=settings.rpm,
    )


class KeyStore:
    """Digest -> Client, from the config file and from keys created with `keys create`."""

    def __init__(self, configured: Mapping[str, ClientSettings]) -> None:
        self._configured = {s.key_sha256: client_from_settings(n, s) for n, s in configured.items()}
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

    def replace_stored(self, stored: Iterable[tuple[str, Client]]) -> None:
        """Swap in the current set of database keys (revocations take effect here)."""
        merged = dict(self._configured)
        merged.update(stored)
        self._by_digest = merged
        self._keyed = self._keyed or bool(merged)

    def authenticate(self, headers: Mapping[str, str]) -> Client:
        """The calling client, or InvalidApiKey."""
        if not self._keyed:
            return LOCAL_CLIENT
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidApiKey(
                "missing gateway key: send 'Authorization: Bearer mgw_...' "
                "(ask the gateway operator for a key)"
            )
        client = self._by_digest.get(key_digest(token.strip()))
        if client is None:
            raise InvalidApiKey("unknown or revoked gateway key")
        return client
