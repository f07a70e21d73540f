"""A small sequential stepbridge adapter (see README.md: "write and certify your own adapter")."""

from .adapter import TinyAdapter, make_adapter

__all__ = ["TinyAdapter", "make_adapter"]
__version__ = "0.1.0"
