import sys


class DataError(Exception):
    """A problem with a dataset the user can fix; the message says what is wrong and what to do.

    The message is always one line (whitespace collapsed), as the CLI prints it after `error: `.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def warn(message: str) -> None:
    """A problem that does not stop preparation (e.g. a partial source), on one line of stderr."""
    print("warning: " + " ".join(message.split()), file=sys.stderr)
