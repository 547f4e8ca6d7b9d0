"""A setting that holds a secret: from an environment variable, or from a file that another
variable names (a mounted Kubernetes Secret, which keeps it out of the environment)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def setting_from_environment(environ: Mapping[str, str], variable: str, file_variable: str, what: str) -> str | None:
    """The value of `variable`, or the stripped contents of the file `file_variable` names; None
    when neither is set. ValueError when both are set or the file cannot be read (the message names
    the variable and the file, never the value)."""
    value, file = environ.get(variable), environ.get(file_variable)
    if value and file:
        raise ValueError(f"both {variable} and {file_variable} are set; set one")
    if file:
        try:
            return Path(file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read the {what} file {file} ({file_variable}): "
                             f"{getattr(error, 'strerror', None) or type(error).__name__}") from None
    return value or None
