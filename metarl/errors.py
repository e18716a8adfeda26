"""Errors that are the user's to fix (reported in one line, without a traceback)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user error in a config file or override; the message is one line."""
