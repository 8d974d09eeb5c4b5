"""Errors that the command line reports as one line, without a traceback."""


class UserError(Exception):
    """A mistake in what the user asked for (bad path, bad option value, ...)."""
