"""Few-shot methods behind one interface; see :mod:`.base`."""

from .base import FewShotMethod, Predictions, available_methods, get_method, register

__all__ = ["FewShotMethod", "Predictions", "available_methods", "get_method", "register"]
