"""The one exception type the CLI turns into a one-line message and exit code 2."""


class ScalingError(ValueError):
    """Bad input from the user: a wrong name, value, path or combination of options.

    The CLI prints ``error: <message>`` and exits with status 2, never a traceback; library callers get
    an ordinary ``ValueError`` subclass they can catch.
    """


def one_line(e: BaseException) -> str:
    """An exception's message on one line (its type name when it has none), for one-line errors."""
    return " ".join(str(e).split()) or type(e).__name__
