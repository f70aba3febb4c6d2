"""Strategies and plugins."""

from .crwn import CRWN, CRWNPlugin

__all__ = ["CRWN", "CRWNPlugin"]
