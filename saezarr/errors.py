"""The one exception type whose message the command line prints as a single line."""


class SaezarrError(Exception):
    """A user-facing failure: the message names the file, row or option at fault."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class SaezarrNote(UserWarning):
    """Something the user should know that does not stop the command; the command line prints it as one line."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut to `limit` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
