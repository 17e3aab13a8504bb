"""attnbench's own attention variants: importing this package registers every family module in it.

The package is the target of attnbench's `attnbench.variants` entry point, so the registry loads it like
any plugin. Adding a family touches one file: a module here with a decorated function (or class).

    from harness import registry
    registry.names(); v = registry.get("vanilla"); v.attention(q, k, v, causal=True)
"""

import importlib
import pkgutil

from harness import registry

# Each family's hue in the report's charts, in the legend's order (harness.report.colors gives every
# variant of a family a shade and line style of it). Data the report cannot hold: the core names no family.
registry.declare_family_colors({
    "vanilla": "#1a1a1a",
    "flash": "#1f63c6",
    "sinks": "#7b3fb8",
    "sparse": "#2e9e3a",
    "longformer": "#9acd32",
    "linear": "#d62728",
    "performer": "#ff8c00",
    "retnet": "#8c564b",
    "gla": "#e754b6",
    "deltanet": "#17becf",
    "mamba": "#c9a100",
    "mamba2": "#6b8e8e",
})

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
