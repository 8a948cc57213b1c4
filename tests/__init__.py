"""The Python tests (pytest from the repository root; pyproject.toml puts the root on sys.path)."""
