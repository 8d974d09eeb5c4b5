"""Errors that the command line reports as one line, without a traceback."""


class UserError(Exception):
    """A mistake in what the user asked for (bad path, bad option value, ...)."""


class SharedError(UserError):
    """A UserError that every rank of a torchrun job raises together: at a decision the ranks took together (a
    collective), or passing on rank 0's error (``xdc.training.distributed.on_main``). Rank 0 alone says it."""


class RankFailed(Exception):
    """Rank 0's part of a torchrun job (``xdc.training.distributed.on_main``) failed with an error that is not a
    UserError (a bug, the machine's OSError): every rank raises it together, rank 0's caused by that error, which
    rank 0 alone says (its traceback, or its one line); the other ranks say that they stopped."""
