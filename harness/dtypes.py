"""The names the command line accepts for a floating dtype, without importing torch: `recommend` and the
report resolve them too, and start faster without torch (harness.registry maps them to torch's dtypes)."""

from __future__ import annotations

ALIASES = {
    "float64": "float64", "fp64": "float64", "double": "float64",
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}


def canonical(name: str) -> str:
    """'bf16' -> 'bfloat16'; ValueError naming the accepted names for anything else."""
    try:
        return ALIASES[str(name).removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(ALIASES)}") from None
