"""The one error type lmforge raises for problems a user can fix."""


class LmforgeError(Exception):
    """A problem with the user's config, data, model or run directory.

    The message is one paragraph naming the key, file, column or line at fault, what was found
    and what was expected. Entry points print it without a traceback.
    """


class RunInterrupted(LmforgeError):
    """A run stopped by SIGTERM or SIGINT after saving a checkpoint it can resume from.

    Entry points print the message (which says how to resume) and exit with 128 + the signal
    number, as a shell reports a process a signal stopped.
    """

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number
