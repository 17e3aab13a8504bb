"""The attention variants. Importing this package registers every family module in it.

    import variants
    variants.names(); v = variants.get("vanilla"); v.attention(q, k, v, causal=True)

Adding a variant touches one file: a module here with a decorated function (or class).
"""

import importlib
import pkgutil

from harness.registry import FAMILIES, Unsupported, Variant, all_variants, get, names

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "common":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["FAMILIES", "Unsupported", "Variant", "all_variants", "get", "names"]
