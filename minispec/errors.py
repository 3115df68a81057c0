"""One exception type for every user-facing failure.

The CLI prints `str(error)` on one line and exits with status 1, so each message
says what went wrong *and* what to do about it.
"""


class MinispecError(Exception):
    """A bad model path, an unsupported checkpoint, an invalid setting, a full KV pool..."""
