"""The one error type a user sees: a sentence naming what is wrong, and the exit code it ends in.

Library code raises a subclass where the reason is known; only the CLI turns it into a line
on the terminal, so nothing here prints.
"""

from __future__ import annotations


class PrelabelError(Exception):
    """A refusal or failure the user can act on; ``str()`` is the whole message."""

    exit_code = 2  # the command could not do its work; 3 is kept for "some images failed"
