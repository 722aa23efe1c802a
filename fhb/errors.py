"""The one exception type for failures a user causes and can fix."""

from __future__ import annotations


class FhbError(Exception):
    """A failure caused by the user's input (a path, a file, a config, a lake).

    The message names the thing, what was expected, what was found and the fix; the CLI prints
    it as one line without a traceback. Internal invariants use ``assert`` instead.
    """
