"""bench: what isolation costs on a real test host."""

__version__ = "0.1.0"
