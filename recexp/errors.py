"""User-facing errors: raised for bad config or data, printed without a traceback; and the checks of typed
settings (a count, a number in a range) that raise them."""
import math
import operator


class RecexpError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class ConfigError(RecexpError):
    """A configuration value is unknown, missing or impossible."""


class DataError(RecexpError):
    """A data file is missing or malformed, or a split came out empty."""


class TrainingError(RecexpError):
    """Training diverged (NaN/inf loss) or could not proceed."""


def is_int(value: object) -> bool:
    """An integer, and not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite int or float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(key: str, value: object, low: int, *, below: int | None = None, rule: str | None = None) -> int:
    """``value`` when it is an integer >= ``low`` (and < ``below``); else a ConfigError naming ``key``, the
    value and ``rule`` (by default the bounds: "an integer >= 1")."""
    if not is_int(value) or value < low or (below is not None and value >= below):
        raise ConfigError(f"{key}={value!r} is not allowed: it must be {rule or _rule('an integer', low, None, None, below)}.")
    return value


def check_number(key: str, value: object, *, low: float | None = None, high: float | None = None,
                 above: float | None = None, below: float | None = None, rule: str | None = None) -> float:
    """``value`` as a float when it is a finite number >= ``low``, <= ``high``, > ``above`` and < ``below``
    (each where given); else a ConfigError naming ``key``, the value and ``rule`` (by default the bounds:
    "a finite number > 0", "a number in [0, 1)")."""
    bounds = (low, high, above, below)
    if not is_number(value) or any(b is not None and not test(value, b) for test, b in zip(_TESTS, bounds)):
        raise ConfigError(f"{key}={value!r} is not allowed: it must be {rule or _rule('a finite number', *bounds)}.")
    return float(value)


_TESTS = (operator.ge, operator.le, operator.gt, operator.lt)  # low, high, above, below


def _rule(kind: str, low: float | None, high: float | None, above: float | None, below: float | None) -> str:
    """What the bounds ask for: "<kind> >= 1", or "<kind> in [0, 1)" (bounded on both sides, so finite)."""
    if (low, above) != (None, None) and (high, below) != (None, None):
        left = f"[{low}" if low is not None else f"({above}"
        right = f"{high}]" if high is not None else f"{below})"
        return f"{kind.replace('finite ', '')} in {left}, {right}"
    tests = (f"{op} {b}" for op, b in zip((">=", "<=", ">", "<"), (low, high, above, below)) if b is not None)
    return " ".join([kind, *tests])
