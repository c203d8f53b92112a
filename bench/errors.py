"""User-facing errors: bad input the user can fix. The CLI prints them and exits with code 2."""

from casdm.errors import InputError


class BenchError(InputError):
    """An actionable error: what was wrong, where, what is allowed, what to run."""


EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
