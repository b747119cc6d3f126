"""The one exception type for mistakes a user can fix from the command line."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """A bad setting or input. Its message is one line that says what to change.

    The command line prints the message alone (no traceback) and exits with status 2.

    Example:
        >>> str(UserError("data.root is missing: pass data.root=PATH"))
        'data.root is missing: pass data.root=PATH'
    """
