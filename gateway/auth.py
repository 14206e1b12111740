"""Bearer tokens -> owners, from a tokens file.

The file (``--tokens FILE``) has one ``TOKEN OWNER`` pair per line; blank lines
and ``#`` comments are ignored. A token grants read access to every volume of
its owner and nothing else::

    no or unknown token            -> 401 (Unauthorized)
    valid token, another owner     -> 403 (Forbidden)

Tokens are compared in constant time. A header that is not valid UTF-8 is
an unknown token (401), never an error. The file is read once at start-up; a
malformed line is a ConfigError rather than a silently ignored grant. Auth can
be switched off explicitly (``--no-auth``) for a gateway on a trusted network.
"""

from __future__ import annotations

import enum
import hmac
from pathlib import Path

from syncd.errors import ConfigError, InvalidName
from syncd.format.layout import validate_name


class Decision(enum.Enum):
    ALLOW = 200
    UNAUTHENTICATED = 401
    FORBIDDEN = 403


class Tokens:
    def __init__(self, grants: dict[str, str] | None) -> None:
        """``grants`` maps token -> owner; None means auth is off."""
        self._grants = grants

    @classmethod
    def load(cls, path: Path) -> Tokens:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read tokens file {path}: {exc}") from exc
        grants: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ConfigError(f"{path}:{number}: expected 'TOKEN OWNER'")
            try:
                grants[parts[0]] = validate_name(parts[1], "owner")
            except InvalidName as exc:
                raise ConfigError(f"{path}:{number}: {exc}") from exc
        if not grants:
            raise ConfigError(f"{path} grants no tokens")
        return cls(grants)

    @property
    def enabled(self) -> bool:
        return self._grants is not None

    def owner_of(self, authorization: str | None) -> str | None:
        """The owner a ``Bearer <token>`` header grants, or None."""
        if self._grants is None or not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:   # aiohttp hands non-UTF-8 header bytes over as surrogates: such a token is simply unknown
            offered = token.strip().encode("utf-8")
        except UnicodeEncodeError:
            offered = b""
        found = None
        for known, owner in self._grants.items():
            if hmac.compare_digest(known.encode(), offered) and offered:
                found = owner
        return found

    def decide(self, authorization: str | None, owner: str) -> Decision:
        if self._grants is None:
            return Decision.ALLOW
        granted = self.owner_of(authorization)
        if granted is None:
            return Decision.UNAUTHENTICATED
        return Decision.ALLOW if granted == owner else Decision.FORBIDDEN
