"""The one exception type for mistakes a user can fix (bad configs, data, paths).

It lives at the bottom of the dependency flow (datamodules -> pipeline -> launch) so every layer can raise it,
and the CLI catches it in exactly one place, printing one line and exiting with status 2.
"""


class UserError(Exception):
    """A problem in the user's input, with the fix in the message.

    Raise it *before* anything is trained or written, so a bad invocation leaves no half-made run behind.
    """
