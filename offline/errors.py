"""The one base class for errors caused by the caller's input (dataset, config, rules files).

Commands map any :class:`InputError` to exit code 2; everything else that fails is a runtime
failure (exit 1). This module imports nothing, so checking for it costs nothing.
"""


class InputError(ValueError):
    """Bad input from the caller; the message names the file, line, column or option."""
