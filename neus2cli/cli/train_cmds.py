"""Placeholder module; commands are registered on ``neus2cli.cli.app``."""

from neus2cli.cli import app  # noqa: F401
