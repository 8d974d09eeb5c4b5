"""Errors that the command line reports as one line, without a traceback."""


class UserError(Exception):
    """A mistake in what the user asked for (bad path, bad option value, ...)."""


class SharedError(UserError):
    """A UserError that every rank of a torchrun job raises together: at a decision the ranks took together (a
    collective), or passing on rank 0's error (``xdc.training.distributed.on_main``). Rank 0 alone says it."""
