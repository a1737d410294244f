"""Every Python snippet of the README, run as pasted: the code-location snippets together in a
fresh code location (its own directory, a module loaded from a file), against the emulator over
real HTTP, with each asset they define materialised; the plain-Python snippet as a script."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import dagster as dg
import pytest

from tests.helpers import wait_terminal

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_code_location", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fresh_location(
    tmp_path: Path, emulator: Any, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """An empty project directory, the working directory, with the API settings a user sets."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOGETHER_API_KEY", api_key)
    monkeypatch.setenv("TOGETHER_BASE_URL", emulator.base_url)
    return tmp_path


def test_the_readme_has_the_snippets_this_test_runs() -> None:
    snippets = python_snippets()
    assert len(snippets) == 7
    assert "build_together_batch_defs(" in snippets[0] and "TogetherClient()" in snippets[6]


def test_code_location_snippets_run_as_pasted(
    fresh_location: Path, emulator: Any, instance: dg.DagsterInstance
) -> None:
    # The first six snippets build on each other (the second reuses `reviews`, ...).
    code = "\n\n".join(python_snippets()[:6])
    code += "\n\nteam = build_together_batch_defs(name='team', prompts=reviews, storage='data/team', translator=TeamTranslator())\n"
    (fresh_location / "definitions.py").write_text(code)
    module = _load(fresh_location / "definitions.py")
    defs: dg.Definitions = module.defs
    dg.Definitions.validate_loadable(defs)

    def asset(key: str) -> dg.AssetsDefinition:
        return defs.resolve_assets_def(key)

    # Assets resolved from the definitions come with the resources bound.
    # The sensor pipeline: submit, the batch ends, the sensor asks for its results run.
    submitted = dg.materialize([asset("reviews"), asset("sentiment_batches")], instance=instance)
    [mat] = submitted.asset_materializations_for_node("sentiment_batches")
    [batch_id] = mat.metadata["together/batch_ids"].value
    wait_terminal(emulator, [batch_id])
    with dg.build_sensor_context(
        instance=instance, definitions=defs, resources=defs.resources
    ) as context:
        tick = defs.resolve_sensor_def("sentiment_batch_sensor")(context)
    [request] = tick.run_requests
    collected = defs.resolve_job_def("sentiment_results_job").execute_in_process(
        instance=instance, partition_key=request.partition_key
    )
    assert collected.success
    assert (fresh_location / "data/together/sentiment/results").is_dir()
    # The submission's final table was reported by the same run.
    event = instance.get_latest_materialization_event(dg.AssetKey("sentiment_final"))
    assert event is not None and event.asset_materialization is not None
    assert event.asset_materialization.metadata["dagster/row_count"].value == 2

    # Downstream: the counts over every batch's answers.
    counted = dg.materialize(
        [asset("sentiment_results"), asset("sentiment_counts")],
        selection=["sentiment_counts"],
        instance=instance,
    )
    assert counted.success
    assert sum(counted.output_for_node("sentiment_counts").values()) == 2

    # Waiting in the run, and the hand-written asset: each submits, waits and joins.
    waited = dg.materialize(
        [asset("reviews"), asset("quick_sentiment_results"), asset("tagged_reviews")],
        instance=instance,
    )
    assert waited.success
    [quick_mat] = waited.asset_materializations_for_node("quick_sentiment_results")
    assert quick_mat.metadata["dagster/row_count"].value == 2
    [own] = waited.asset_materializations_for_node("tagged_reviews")
    assert own.metadata["together/n_succeeded"].value == 2

    # The translator, and the budgeted pipeline's options.
    assert module.team.results_asset.key == dg.AssetKey(["llm", "team_results"])
    assert module.budgeted.final_asset.key == dg.AssetKey("budgeted_final")
    checks = {c.name for c in module.extract.results_asset.check_specs}
    assert "invalid_output_rate" in checks


def test_plain_python_snippet_runs_as_pasted(fresh_location: Path) -> None:
    with open("requests.jsonl", "w") as handle:
        for i in range(3):
            body = {"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}]}
            handle.write(json.dumps({"custom_id": f"r{i}", "body": body}) + "\n")
    scope: dict[str, Any] = {}
    exec(python_snippets()[6], scope)
    scope["client"].close()
    assert scope["summary"].counts["succeeded"] == 3
    assert (fresh_location / "results.parquet").exists()
