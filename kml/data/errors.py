import sys


class DataError(Exception):
    """A problem with a dataset the user can fix; the message says what is wrong and what to do."""


def warn(message: str) -> None:
    """A problem that does not stop preparation (e.g. a partial source), on one line of stderr."""
    print(f"warning: {message}", file=sys.stderr)
