"""The ``recsys`` command line (typer + rich)."""
