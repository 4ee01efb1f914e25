"""Errors a user can hit. Each message names what is wrong and the fix."""

from __future__ import annotations


class ConnectorError(Exception):
    """Base of the connector's own errors: the message is meant for a person."""


class ConfigError(ConnectorError):
    """Settings are missing, malformed or inconsistent with a service (e.g. label config)."""


class ServiceUnavailable(ConnectorError):
    """A service (Label Studio, object storage) cannot be reached after retries."""


class AuthError(ConnectorError):
    """A service rejected the credentials (wrong or expired token, bad keys)."""


class BadCommand(ConnectorError):
    """An admin command's input is wrong (an unknown key, round or strategy); nothing was
    journaled or changed."""


class CheckpointError(ConnectorError):
    """A model checkpoint cannot be read (partial or truncated file): it is never loaded,
    and the round that wrote it trains again."""


class BadItem(ConnectorError):
    """One pool item cannot be used (corrupt, missing, not an image); it is quarantined."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason
