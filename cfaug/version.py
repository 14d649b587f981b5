"""The single source of cfaug's version."""

__version__ = "0.1.0"
