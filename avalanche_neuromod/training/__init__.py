"""Strategies and plugins."""

from .crwn import CRWN

__all__ = ["CRWN"]
