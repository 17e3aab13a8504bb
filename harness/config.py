"""Typed, validated experiment configs. Every case is a frozen pydantic model; its row carries it whole."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from harness import registry
from harness.registry import as_dtype, dtype_name

Device = Literal["cpu", "cuda"]
Profile = Literal["quick", "standard", "full"]


class Case(BaseModel):
    """One measurement: a variant under one configuration. Suites subclass it with their own fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    suite: str
    variant: str
    device: Device
    dtype: str = "float32"
    params: dict[str, Any] = {}  # variant parameters beyond its defaults (window, nb_features, ...)

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, name: str) -> str:
        registry.get(name)  # raises ValueError listing the valid names
        return name

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, name: str) -> str:
        return dtype_name(as_dtype(name))

    @property
    def case_id(self) -> str:
        """Stable id of the configuration: the same case in a re-run has the same id (resume)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    @property
    def torch_dtype(self):
        return as_dtype(self.dtype)

    def describe(self) -> str:
        """A short human label for progress bars and logs."""
        return f"{self.variant} {self.dtype}"

    def flat(self) -> dict[str, Any]:
        """The row's config columns, with the registry's facts about the variant and the package it
        comes from (every suite, every status). Nested dicts (params) stay dicts: the store writes them as
        sorted JSON."""
        v = registry.get(self.variant)
        return {**self.model_dump(mode="json"), "family": v.family, "exact": v.exact,
                "backend": v.backend_for(self.device), "variant_package": v.source.package,
                "variant_version": v.source.version}
