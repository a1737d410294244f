"""docs/configuration.md stays true: every argument of ``build_together_batch_defs``, every
field of the options classes, of ``TogetherResource`` and of the Component's model has its row,
with its default where it is a plain value; the imports work; the full ``defs.yaml`` loads."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster.components.testing import create_defs_folder_sandbox
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from dagster_together import (
    AudioTemplate,
    BatchingOptions,
    BatchStorageLayout,
    CostOptions,
    RequestTemplate,
    ResubmitOptions,
    ResultsOptions,
    SensorOptions,
    TogetherBatchComponent,
    TogetherResource,
    WaitOptions,
    build_together_batch_defs,
)
from dagster_together.cost import ModelPrice
from tests.docs_blocks import blocks

CONFIGURATION = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
REQUIRED = object()


def section(title: str) -> str:
    """The text under the heading ``title`` up to the next heading of any level."""
    text = CONFIGURATION.read_text()
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ |\Z)", text, re.M | re.S)
    assert match, f"docs/configuration.md has no section {title!r}"
    return match.group(1)


def rows(text: str) -> dict[str, tuple[str, str]]:
    """``| `name` | default | what |`` rows: name -> (default, what)."""
    found = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 3:
            found[cells[0].strip("`")] = (cells[1], " | ".join(cells[2:]))
    return found


def dataclass_fields(cls: type) -> dict[str, Any]:
    fields = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            fields[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            fields[f.name] = f.default_factory()
        else:
            fields[f.name] = REQUIRED
    return fields


def model_fields(cls: type[BaseModel]) -> dict[str, Any]:
    fields = {}
    for name, info in cls.model_fields.items():
        if info.default is not PydanticUndefined:
            fields[name] = info.default
        elif info.default_factory is not None:
            fields[name] = info.default_factory()  # type: ignore[call-arg]
        else:
            fields[name] = REQUIRED
    return fields


def factory_arguments() -> dict[str, Any]:
    return {
        name: REQUIRED if p.default is inspect.Parameter.empty else p.default
        for name, p in inspect.signature(build_together_batch_defs).parameters.items()
    }


def says_default(cell: str, default: Any) -> bool:
    """Whether a table's default cell states ``default`` (plain values only)."""
    plain = cell.replace(",", "").lower()
    if default is REQUIRED:
        return cell == "required"
    if cell == "required":
        return False
    if isinstance(default, bool):
        return ("on" if default else "off") in plain or str(default).lower() in plain
    if isinstance(default, enum.Enum):
        return default.name.lower() in plain
    if isinstance(default, (int, float, str)):
        return str(default).lower() in plain
    if isinstance(default, dict) and not default:
        return "{}" in cell
    return True  # None and objects: any wording but "required"


CLASSES = {
    "The factory: `build_together_batch_defs`": factory_arguments,
    "`BatchingOptions`": lambda: dataclass_fields(BatchingOptions),
    "`ResultsOptions`": lambda: dataclass_fields(ResultsOptions),
    "`SensorOptions`": lambda: dataclass_fields(SensorOptions),
    "`WaitOptions`": lambda: dataclass_fields(WaitOptions),
    "`CostOptions`": lambda: dataclass_fields(CostOptions) | dataclass_fields(ModelPrice),
    "`ResubmitOptions`": lambda: dataclass_fields(ResubmitOptions),
    "`RequestTemplate`": lambda: dataclass_fields(RequestTemplate),
    "`AudioTemplate`": lambda: dataclass_fields(AudioTemplate),
    "`BatchStorageLayout`": lambda: dataclass_fields(BatchStorageLayout),
    "The resource: `TogetherResource`": lambda: model_fields(TogetherResource),
    "The Component: `defs.yaml`": lambda: model_fields(TogetherBatchComponent),
}


@pytest.mark.parametrize("title", list(CLASSES))
def test_every_field_has_its_row_and_its_default(title: str) -> None:
    documented = rows(section(title))
    for name, default in CLASSES[title]().items():
        assert name in documented, f"docs/configuration.md, {title}: no row for `{name}`"
        cell = documented[name][0]
        assert says_default(cell, default), f"{title}, `{name}`: {cell!r} for {default!r}"


def test_the_component_rows_name_every_nested_field() -> None:
    documented = rows(section("The Component: `defs.yaml`"))
    for name, info in TogetherBatchComponent.model_fields.items():
        nested = [
            t
            for t in getattr(info.annotation, "__args__", (info.annotation,))
            if isinstance(t, type) and issubclass(t, BaseModel)
        ]
        for model in nested:
            text = " ".join(documented[name])
            for field in model.model_fields:
                assert f"`{field}`" in text or model.__name__ == "EnvVarRef", (name, field)
    cost = " ".join(documented["cost"])
    assert all(f"`{field}`" in cost for field in ("input", "output", "batch_discount"))


def test_the_imports_work() -> None:
    [imports] = [b.text for b in blocks(CONFIGURATION) if b.language == "python"]
    exec(imports, {})


def test_the_full_defs_yaml_sets_every_field_and_loads() -> None:
    [block] = [b for b in blocks(CONFIGURATION) if b.language == "yaml"]
    attributes = yaml.safe_load(block.text)["attributes"]
    # Every field but `audio`, the alternative to `template`.
    assert set(attributes) == set(TogetherBatchComponent.model_fields) - {"audio"}
    with create_defs_folder_sandbox() as sandbox:
        (sandbox.defs_folder_path / "prompts.py").write_text(
            "import dagster as dg\n\n@dg.asset\ndef reviews() -> None: ...\n"
        )
        folder = sandbox.defs_folder_path / "sentiment"
        folder.mkdir()
        (folder / "defs.yaml").write_text(block.text)
        with sandbox.build_component_tree() as tree:
            component = tree.load_component(folder)
            assert isinstance(component, TogetherBatchComponent)
            assert component.cost.max_estimated_cost == 25.0
            defs = tree.build_defs()
            assert defs.resolve_sensor_def("sentiment_batch_sensor")
            assert defs.resolve_assets_def("sentiment_results").group_names_by_key
