"""The one error rule of ray-router.

A user's mistake (a bad file, flag, field or request) raises ``UserError``, with a one-line message that
names what is wrong and where (the file, row, column, field or request part). The command line prints it
as ``error: <message>`` and exits with code 2; the HTTP API answers it with its ``status`` (a 4xx) and a
JSON error body. Pydantic validation of user input is turned into a UserError where the input enters
(``validation_message``). Any other exception is a bug in ray-router: a traceback at the command line, a
500 at the API.
"""


class UserError(Exception):
    """Bad input from the user; the message names the file, row, column, field or request part."""

    status: int = 400  # the HTTP status when it reaches the API


def validation_message(error) -> str:
    """One line from a pydantic ValidationError: `field.path: message; ...`."""
    return "; ".join(
        f"{'.'.join(str(part) for part in e['loc']) or 'value'}: {e['msg'].removeprefix('Value error, ')}"
        for e in error.errors()
    )


def validated(model, data, what: str):
    """`model.model_validate(data)` for input from a user; a UserError `invalid <what>: field: message` when
    it is not valid (pydantic models raise their own ValidationError when built in Python code)."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise UserError(f"invalid {what}: {validation_message(err)}") from None
