"""PEFT methods. Importing the package imports every module in it, so each method's
`@register_method` decorator runs; there is no central list to edit."""

from core.registry import import_submodules

import_submodules(__name__, __path__)
