"""HTML reports: `bench report RUN...` writes one self-contained file (see build.py)."""

from bench.report.build import render, write

__all__ = ["render", "write"]
