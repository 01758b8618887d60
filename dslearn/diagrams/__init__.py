"""Concept diagrams drawn by code (matplotlib patches, nothing downloaded): one module per chapter, each with
functions that return a ``matplotlib.figure.Figure`` of one idea (a block, a dataflow, a schedule)."""
