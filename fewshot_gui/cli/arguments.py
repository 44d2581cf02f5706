"""Checked option values and the help layout shared by the sub-commands.

The ``type=`` functions turn an option's text into its value or raise
:class:`argparse.ArgumentTypeError` with a message saying what is wanted, so that argparse
reports the mistake with the sub-command's usage line and exit code 2 instead of a failure
deep inside the work; :func:`check_device` refuses a CUDA device this machine does not have
before the work starts. :class:`DefaultsHelpFormatter` shows every option's default.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Callable

from fewshot_gui.core.errors import ConfigError

_CUDA_INDEX = re.compile(r"cuda:\d+")
_GPU_WORDS = {"gpu", "nvidia", "cuda0", "gpu0"}


def _named(name: str, parse: Callable) -> Callable:
    parse.__name__ = name  # argparse names the type in its own messages
    return parse


def whole_number(minimum: int) -> Callable[[str], int]:
    """A ``type=`` for a whole number of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give one of at least {minimum}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value
    return _named(f"whole number >= {minimum}", parse)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_number(text: str) -> float:
    """A ``type=`` for a finite number above 0 (learning rates)."""
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text!r}")
    return value


def non_negative_number(text: str) -> float:
    """A ``type=`` for a finite number of at least 0 (strengths, where 0 means off)."""
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of at least 0, not {text!r}")
    return value


def fraction(text: str) -> float:
    """A ``type=`` for a share: at least 0 and below 1."""
    value = _number(text)
    if not (math.isfinite(value) and 0 <= value < 1):
        raise argparse.ArgumentTypeError(f"must be a fraction from 0 up to (not including) 1, e.g. 0.4; not {text!r}")
    return value


def finite_or_inf(text: str) -> float:
    """A ``type=`` for a threshold: any finite number, or ``inf`` (never reached)."""
    value = _number(text)
    if math.isnan(value) or value == -math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number or inf, not {text!r}")
    return value


def weight_list(text: str) -> list[float]:
    """A ``type=`` for comma-separated sampling weights: numbers of at least 0, not all 0."""
    weights = []
    for part in text.split(","):
        try:
            w = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give numbers separated by commas, e.g. 2,1") from None
        if not (math.isfinite(w) and w >= 0):
            raise argparse.ArgumentTypeError(f"{text!r}: every weight must be a number of at least 0")
        weights.append(w)
    if not any(weights):
        raise argparse.ArgumentTypeError(f"{text!r}: at least one weight must be above 0")
    return weights


def device_name(text: str) -> str:
    """A ``type=`` for a torch device: ``cpu``, ``cuda`` or ``cuda:N`` (any letter case)."""
    name = text.strip().lower()
    if name in ("cpu", "cuda") or _CUDA_INDEX.fullmatch(name):
        return name
    hint = "; for an NVIDIA GPU give cuda" if name in _GPU_WORDS else ""
    raise argparse.ArgumentTypeError(f"unknown device {text!r}: give cpu, cuda or cuda:N (the N-th NVIDIA GPU), "
                                     f"or leave the option out to use cuda when present{hint}")


# ------------------------------------------------------------------------------------------------
# Help
# ------------------------------------------------------------------------------------------------
class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: ...)`` to every option's help that does not already name its default:
    ``off`` for a flag, ``none`` for an option without a value by default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "default" in text.lower() or action.required
                or action.default is argparse.SUPPRESS):
            return text  # positionals, help/version, options that say it themselves
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            shown = "on" if action.default else "off"
        elif action.default is None:
            shown = "none"
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})"


class RawDescriptionDefaultsHelpFormatter(DefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """:class:`DefaultsHelpFormatter` that keeps the description's own line breaks."""


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` show every option's default in its help (keeping a raw description raw)."""
    raw = issubclass(parser.formatter_class, argparse.RawDescriptionHelpFormatter)
    parser.formatter_class = RawDescriptionDefaultsHelpFormatter if raw else DefaultsHelpFormatter


def check_device(device: str | None) -> None:
    """Raise :class:`ConfigError` before any work when a CUDA ``device`` is not on this machine."""
    if device is None or not device.startswith("cuda"):
        return
    import torch  # only when a CUDA device is asked for

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if count == 0:
        raise ConfigError(f"--device {device}: no CUDA device is available on this machine; use --device cpu "
                          "(or leave the option out)")
    if index >= count:
        raise ConfigError(f"--device {device}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                          f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}); give one of those, or cpu")
