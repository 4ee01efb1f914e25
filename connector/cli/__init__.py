"""The ``al-connector`` command line."""

from connector.cli.main import main

__all__ = ["main"]
