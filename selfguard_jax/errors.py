"""The project's error types, in one module that imports nothing of the package."""


class ConfigError(ValueError):
    """A config (a model's config.json, GGUF metadata or an eval config) this project cannot run exactly; the
    message names the field and the fix."""


class CheckpointError(ValueError):
    """A checkpoint this project cannot load exactly; the message says what is wrong and how to fix it."""
