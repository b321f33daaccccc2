"""API keys: who may call which endpoint.

Keys are ``scope:KEY`` entries, from ``RECSYS_API_KEYS="read:KEY1,write:KEY2,admin:KEY3"`` or
from a file with one entry per line (``recsys serve --api-keys-file FILE``; blank lines and
``#`` comments are skipped). A scope may have several keys (rotation: add the new key, move the
clients, drop the old one). Clients send ``Authorization: Bearer KEY``.

Scopes: ``read`` (recommendations, interests), ``write`` (POST /v1/events), ``admin``
(DELETE /v1/users/{id}; admin implies read and write). ``write`` does not imply ``read``: an
event collector that holds a write key cannot read anyone's profile.

A missing or unknown key is a 401 with ``WWW-Authenticate: Bearer``, a key without the scope a
403. Keys are kept as SHA-256 digests and every configured key is compared with
``hmac.compare_digest``, so the time of a check tells nothing about which key (or how much of
it) matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from recsys.serving.settings import ServingError

KEYS_ENV = "RECSYS_API_KEYS"
# A guessable key is no key; secrets.token_urlsafe(32) gives 43 characters.
MIN_KEY_LENGTH = 16


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


@dataclass(frozen=True)
class ApiKeys:
    """The configured keys as (scope, SHA-256 digest) pairs; never the keys themselves."""

    digests: tuple[tuple[Scope, bytes], ...]

    @classmethod
    def parse(cls, text: str, *, source: str) -> ApiKeys:
        """Entries ``scope:KEY`` separated by commas or newlines. Raises ``ServingError``
        naming ``source`` and the entry's position, never the key."""
        entries = [
            entry.strip()
            for line in text.splitlines()
            if not line.lstrip().startswith("#")
            for entry in line.split(",")
            if entry.strip()
        ]
        if not entries:
            raise ServingError(f"{source} holds no API keys")
        digests = []
        for position, entry in enumerate(entries, start=1):
            name, _, key = entry.partition(":")
            where = f"{source}, entry {position}"
            try:
                scope = Scope(name.strip())
            except ValueError:
                raise ServingError(
                    f"{where}: expected scope:KEY with scope read, write or admin"
                ) from None
            if len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
                raise ServingError(
                    f"{where}: a key needs {MIN_KEY_LENGTH}+ characters and no spaces "
                    "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )
            digests.append((scope, _digest(key)))
        return cls(tuple(digests))

    @classmethod
    def configured(
        cls, keys_file: Path | None, environ: Mapping[str, str] = os.environ
    ) -> ApiKeys | None:
        """The keys of ``keys_file`` when given, else of ``$RECSYS_API_KEYS``; None when
        neither is set."""
        if keys_file is not None:
            try:
                text = keys_file.read_text()
            except OSError as exc:
                raise ServingError(f"cannot read the API keys file: {exc}") from None
            return cls.parse(text, source=str(keys_file))
        text = environ.get(KEYS_ENV, "")
        return cls.parse(text, source=f"${KEYS_ENV}") if text.strip() else None

    def scopes_of(self, key: str) -> frozenset[Scope]:
        """The scopes ``key`` grants (admin brings all); empty for an unknown key."""
        presented = _digest(key)
        granted = {
            scope
            for scope, digest in self.digests
            # compare_digest on every entry: no early exit tells which one matched
            if hmac.compare_digest(digest, presented)
        }
        return frozenset(Scope) if Scope.ADMIN in granted else frozenset(granted)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


_BEARER = HTTPBearer(
    auto_error=False, description="an API key of the endpoint's scope (read, write or admin)"
)


def requires(scope: Scope, keys: ApiKeys | None) -> list[Any]:
    """The route dependencies that admit a request with a key of ``scope``; none without
    configured keys (the service then listens on loopback only, see ``ServiceSettings``)."""
    if keys is None:
        return []

    async def check(
        credentials: HTTPAuthorizationCredentials | None = Security(_BEARER),
    ) -> None:
        if credentials is None:
            raise HTTPException(
                401,
                f"this endpoint needs an API key with the {scope} scope: "
                "send 'Authorization: Bearer KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        granted = keys.scopes_of(credentials.credentials)
        if not granted:
            raise HTTPException(
                401, "unknown API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        if scope not in granted:
            raise HTTPException(403, f"this API key lacks the {scope} scope")

    return [Security(check)]
