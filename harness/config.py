"""Typed, validated experiment configs. Every case is a frozen pydantic model; its row carries it whole.

A case's id (`Case.case_id`) is the hash of its config, and rows are found again by it (resume, --retry,
merge), so an id must outlive the code that wrote it. The rule: the id hashes every field of the model,
except a field declared `AddedLater` (`Annotated[int, ADDED_LATER] = Field(1, ...)`) while it holds its
default. A field added to a model with a default is declared so; every id recorded before it existed
still names its case, and a case that sets it to another value gets an id of its own. Renaming,
removing or re-typing a field, or changing a default, changes ids: rows recorded before are then other
cases. tests/test_case_ids.py recomputes the id of every committed reference row.

Why this rule: the committed rows were written before `criterion_holds` existed (no such column) and
after, with 3; the rule reproduces all of them. The code between the two (7e90d12 until this rule)
hashed the default 1 too; rows it wrote at the default, none of them committed, get new ids. No rule
keeps both those and the rows written before the field (results/README.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from harness import registry
from harness.registry import as_dtype, dtype_name

Device = Literal["cpu", "cuda"]
Profile = Literal["quick", "standard", "full"]


class AddedLater:
    """Marks a field added to a Case model after case ids were first recorded (Annotated metadata): the
    id leaves it out while it holds its default. The field must have a default."""

    def __repr__(self) -> str:
        return "ADDED_LATER"


ADDED_LATER = AddedLater()


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

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name, info in cls.model_fields.items():
            if any(isinstance(m, AddedLater) for m in info.metadata) and info.is_required():
                raise TypeError(f"{cls.__name__}.{name} is declared AddedLater without a default: a case "
                                f"recorded before it existed could not be rebuilt")

    def identity(self, exclude: Iterable[str] = ()) -> dict[str, Any]:
        """The fields an id hashes (module docstring): every field but those in `exclude`, and an
        AddedLater field only when it differs from its default."""
        fields = type(self).model_fields
        at_default = {name for name, info in fields.items()
                      if any(isinstance(m, AddedLater) for m in info.metadata)
                      and getattr(self, name) == info.get_default(call_default_factory=True)}
        return self.model_dump(mode="json", exclude=set(exclude) | at_default)

    @property
    def case_id(self) -> str:
        """Stable id of the configuration: the same case in a re-run, by this code or a later one that
        added fields with defaults, has the same id (resume)."""
        blob = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Case:
        """The case a store row was written from: the model's fields read from the row's config columns.

        A field the row lacks, or holds no value for (compaction unifies the columns of a suite's rows),
        takes its default; a required one then reads None. A dict field is stored as JSON (the store
        writes dicts so) and is decoded."""
        data = {}
        for name, info in cls.model_fields.items():
            value = row.get(name)
            if value is None and not info.is_required():
                continue
            if isinstance(value, str) and _is_dict_field(info.annotation):
                value = json.loads(value)
            data[name] = value
        return cls(**data)

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


def _is_dict_field(annotation: Any) -> bool:
    return annotation is dict or getattr(annotation, "__origin__", None) is dict
