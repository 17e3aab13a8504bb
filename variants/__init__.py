"""The attention variants. Importing this package registers every family.

    import variants
    variants.names(); v = variants.get("vanilla"); v.attention(q, k, v, causal=True)
"""

from harness.registry import FAMILIES, Unsupported, Variant, all_variants, get, names

from . import vanilla  # noqa: F401  (registers; keep the family modules listed below)

__all__ = ["FAMILIES", "Unsupported", "Variant", "all_variants", "get", "names"]
