"""See the part docstrings."""
