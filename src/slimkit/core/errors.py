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
