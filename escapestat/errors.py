"""The one exception type for domain errors: bad tables, bad study files, impossible fits."""


class EscapestatError(Exception):
    """A problem with the user's input or data, reported as one line and exit status 1."""
