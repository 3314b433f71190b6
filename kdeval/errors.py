"""The one exception type the CLI turns into a one-line message and exit status 2."""


class KdevalError(Exception):
    """A problem with the user's input (a file, a field, an option), not a bug in kdeval.

    The message names the file and the problem; the CLI prints it on one line, without a traceback.
    """
