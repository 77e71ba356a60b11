"""User-facing errors: one line naming the file, field, key or request part at fault."""


class RecsysError(Exception):
    """An error caused by the user's input, shown without a traceback.

    The message must name what is wrong and where (file, field, key, line).
    """


class BadDataError(RecsysError):
    """Too many malformed rows, or input data that cannot be read at all."""
