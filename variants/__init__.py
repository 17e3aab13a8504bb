"""attnbench's own attention variants: importing this package registers every family module in it.

The package is the target of attnbench's `attnbench.variants` entry point, so the registry loads it like
any plugin. Adding a family touches one file: a module here with a decorated function (or class).

    from harness import registry
    registry.names(); v = registry.get("vanilla"); v.attention(q, k, v, causal=True)
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
