"""The one exception type for user mistakes: the CLI prints its message as one line, no traceback."""


class UserError(Exception):
    """Bad input from the user (a path, a column, a flag). The message names the file/row/column."""


def validation_message(error) -> str:
    """One line from a pydantic ValidationError: `field.path: message; ...`."""
    return "; ".join(
        f"{'.'.join(str(part) for part in e['loc']) or 'value'}: {e['msg'].removeprefix('Value error, ')}"
        for e in error.errors()
    )
