"""User-facing errors: one line that names the field and the value; the CLI maps them to
exit code 2."""


class SlimkitError(ValueError):
    """A problem with the user's input (plan, model file, artifact, arguments)."""


class ConfigError(SlimkitError):
    """A method config or plan field has a wrong name, type or value."""

    def __init__(self, field: str, value: object, expected: str, *, unknown: bool = False) -> None:
        self.field = field
        self.value = value
        self.expected = expected
        self.unknown = unknown
        if unknown:
            super().__init__(f"{field}: unknown field ({expected}), value {value!r}")
        else:
            super().__init__(f"{field}: expected {expected}, got {value!r}")


class ArtifactError(SlimkitError):
    """An artifact is missing, corrupted or tampered with."""


def one_line(exc: BaseException) -> str:
    """"Type: first line of the message", short enough for a table cell or a log line."""
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
