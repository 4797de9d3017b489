"""The one error hierarchy of leukoedge.

Library code raises these; the CLI turns each into one line and the exit code below.
Per-file problems in batch runs (``ImageError``) become error rows instead.

Exit codes (the same for every command):
  0  everything done
  1  some files failed (their rows say why)
  2  usage error (bad flag value, output exists, ...)
  3  cannot run at all (bad or missing model, provider unavailable, no image found)
  130 interrupted by SIGINT, 143 by SIGTERM (after flushing what was done)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_CANNOT_RUN = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

#: The longest reason taken from a library's exception into one of our messages.
REASON_LIMIT = 200


def first_line(exc: BaseException, limit: int = REASON_LIMIT) -> str:
    """The first non-empty line of ``exc``'s message, at most ``limit`` characters, for
    quoting a library's exception in one line of ours; the exception's type name when its
    message is empty. The one place that shortens exception messages."""
    for line in str(exc).splitlines():
        text = " ".join(line.split())
        if text:
            return text if len(text) <= limit else text[: limit - 3] + "..."
    return type(exc).__name__


class LeukoedgeError(Exception):
    """Base of every error leukoedge raises on purpose.

    ``hint`` says what the user can do about it; ``exit_code`` is what the CLI returns.
    """

    exit_code = EXIT_CANNOT_RUN

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(LeukoedgeError):
    """The command line asks for something contradictory or unsafe."""

    exit_code = EXIT_USAGE


class OutputExistsError(UsageError):
    """An output file exists and the user did not allow overwriting or resuming it."""


class DataError(LeukoedgeError):
    """Input paths, label files or data layouts that cannot be used."""


class NoImagesError(DataError):
    """No image was found under the paths given."""


class ImageError(LeukoedgeError):
    """One image cannot be read; in batch runs this becomes an error row."""

    exit_code = EXIT_SOME_FAILED


class ModelError(LeukoedgeError):
    """A model file is missing, unreadable, or not a leukoedge model."""


class SpecError(ModelError):
    """A model's ModelSpec is missing, malformed, too new, or disagrees with its graph."""


class ProviderError(LeukoedgeError):
    """An execution provider was asked for and cannot run here."""


class MissingExtraError(LeukoedgeError):
    """An optional dependency (an install extra) is missing."""


class PluginError(LeukoedgeError):
    """A plugin failed to load or register."""


class TrainingError(LeukoedgeError):
    """Training cannot start or continue (bad data, bad checkpoint, missing weights)."""


class ExportError(LeukoedgeError):
    """Export failed; no model file was left behind."""


class ParityError(ExportError):
    """ONNX outputs do not match PyTorch within the tolerance."""


class RequestError(LeukoedgeError):
    """An HTTP request to ``leukoedge serve`` cannot be answered; ``status`` is the HTTP
    status it gets (400, 413, 415, ...). The server answers it and keeps serving."""

    exit_code = EXIT_USAGE

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Interrupted(LeukoedgeError):  # noqa: N818 - a state, not a failure
    """The run was stopped by a signal after flushing its output."""

    def __init__(self, signum: int) -> None:
        import signal

        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}; what was done is saved",
                         "rerun with --resume to finish")
        self.signum = signum
        self.exit_code = 128 + signum
