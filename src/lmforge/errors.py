"""The one error type lmforge raises for problems a user can fix."""


class LmforgeError(Exception):
    """A problem with the user's config, data, model or run directory.

    The message is one paragraph naming the key, file, column or line at fault, what was found
    and what was expected. Entry points print it without a traceback.
    """
