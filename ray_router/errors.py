"""The one exception type for user mistakes: the CLI prints its message as one line, no traceback."""


class UserError(Exception):
    """Bad input from the user (a path, a column, a flag). The message names the file/row/column."""
