"""Model shapes a serving question is asked at: `--model` of `attnbench run --suite throughput` (cases
measured at the shape's per-layer attention: its heads, head_dim and KV heads) and of `attnbench
recommend` (the answer's per-layer figures multiplied by its layers, and its KV heads).

A preset is the attention shape of a real open model, as its published config states it (`config.json`:
num_hidden_layers, hidden_size, num_attention_heads, num_key_value_heads):

- `1b`: Meta's Llama-3.2-1B: 16 layers, d_model 2048, 32 heads of 64, 8 KV heads;
- `8b`: Meta's Llama-3.1-8B: 32 layers, d_model 4096, 32 heads of 128, 8 KV heads.

Only the attention is modelled: the MLPs, embeddings and weights are not part of any figure.
No torch here: `recommend` reads the presets without it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, PositiveInt, model_validator


class ModelShape(BaseModel):
    """A decoder's attention shape: `n_layers` attention layers of `n_heads` query heads over d_model,
    k and v with `kv_heads` heads (grouped-query attention)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    source: str  # the open model whose shape it is
    n_layers: PositiveInt
    d_model: PositiveInt
    n_heads: PositiveInt
    kv_heads: PositiveInt

    @model_validator(mode="after")
    def _divides(self) -> ModelShape:
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads {self.n_heads} must divide d_model {self.d_model}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"kv_heads {self.kv_heads} must divide n_heads {self.n_heads}")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def describe(self) -> str:
        """'8b (Llama-3.1-8B: 32 layers, d_model 4096, 32 heads of 128, 8 KV heads)'."""
        return (f"{self.name} ({self.source}: {self.n_layers} layers, d_model {self.d_model}, {self.n_heads} "
                f"heads of {self.head_dim}, {self.kv_heads} KV heads)")


PRESETS = {shape.name: shape for shape in (
    ModelShape(name="1b", source="Llama-3.2-1B", n_layers=16, d_model=2048, n_heads=32, kv_heads=8),
    ModelShape(name="8b", source="Llama-3.1-8B", n_layers=32, d_model=4096, n_heads=32, kv_heads=8),
)}


def preset(name: str) -> ModelShape:
    """The preset called `name` (case-insensitive), else ValueError in one line naming the presets."""
    found = PRESETS.get(str(name).strip().lower())
    if found is None:
        known = "; ".join(shape.describe() for shape in PRESETS.values())
        raise ValueError(f"unknown --model {name!r}; presets: {known}")
    return found
