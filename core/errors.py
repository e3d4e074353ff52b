"""Errors meant for the user: printed as one line by the CLI, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (config key, file, path, value). The message names it."""


class ConfigError(UserError):
    """A configuration file or override is invalid; the message names the key path."""


class DataError(UserError):
    """A data file or case is missing, corrupt or inconsistent; the message names the file."""


class CheckpointError(UserError):
    """A checkpoint cannot be used for the requested model; the message lists what differs."""
