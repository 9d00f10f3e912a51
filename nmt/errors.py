"""The one exception type for bad user input.

Raise ``UserError`` with a message that names the file, line or field at fault; the ``nmt``
command prints it on one line and exits non-zero, without a traceback (set ``NMT_TRACEBACK=1``
to see one).
"""


class UserError(Exception):
    """Bad input from the user: a missing or malformed file, an unknown option value, ..."""
