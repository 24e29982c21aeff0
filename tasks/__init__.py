"""Benchmark tasks: loaders, Appendix-C splits, Appendix-D templates and offline metrics.
Importing the package imports every module so each `@register_task` runs."""

from core.registry import import_submodules

import_submodules(__name__, __path__)
