"""The one exception type for expected mistakes (bad paths, corrupt files, servers down).

The CLI prints a ``MultError`` as a single line and exits non-zero; anything else is a bug and keeps
its traceback.
"""


class MultError(Exception):
    """An expected, user-fixable problem. The message names the file or value and what to do."""

    exit_code = 2


class ServerUnavailable(MultError):
    """The model server does not answer (not started, stopped, or still starting): worth retrying later."""
