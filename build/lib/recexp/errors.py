"""User-facing errors: raised for bad config or data, printed without a traceback."""


class RecexpError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class ConfigError(RecexpError):
    """A configuration value is unknown, missing or impossible."""


class DataError(RecexpError):
    """A data file is missing or malformed, or a split came out empty."""


class TrainingError(RecexpError):
    """Training diverged (NaN/inf loss) or could not proceed."""
