"""User-facing errors: the CLI prints their message on one line and exits 1, never a traceback."""


class TokeffError(Exception):
    """Bad input or an unmet precondition that the user can fix; the message says how."""
