"""Few-shot methods behind one interface; see :mod:`.base`."""

from fewshot_gui.core.fewshot.base import (FewShotMethod, Predictions, available_methods, get_method, method_class,
                                           predict_folder)

__all__ = ["FewShotMethod", "Predictions", "available_methods", "get_method", "method_class", "predict_folder"]
