"""Errors a user can cause, each carrying where it happened and how to fix it."""

from __future__ import annotations


class FmbenchError(Exception):
    """A problem the user can fix: the plugin turns it into a pytest usage error (exit 4)."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 fix: str | None = None) -> None:
        self.message = message
        self.file = file
        self.key = key
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        where = ", ".join(p for p in (self.file, f"key '{self.key}'" if self.key else None) if p)
        text = f"{where}: {self.message}" if where else self.message
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class ConfigError(FmbenchError):
    """The config file is missing, unreadable or invalid."""


class EndpointError(FmbenchError):
    """An endpoint could not be deployed, reached or torn down."""
