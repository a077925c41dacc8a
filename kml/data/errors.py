import sys

from kml.errors import DataError

__all__ = ["DataError", "warn"]


def warn(message: str) -> None:
    """A problem that does not stop preparation (e.g. a partial source), on one line of stderr."""
    print("warning: " + " ".join(message.split()), file=sys.stderr)
