"""Every Python snippet of the README and docs/concepts.md, run as pasted: the code-location
snippets together in a fresh code location (its own directory, a module loaded from a file),
against the emulator over real HTTP, with each asset they define materialised; the plain-Python
snippet as a script; docs/troubleshooting.md's snippets on a batch stuck in VALIDATING."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest

from dagster_together.requests import build_requests
from tests.docs_blocks import README, blocks
from tests.helpers import wait_terminal

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_snippets(*paths: Path) -> list[str]:
    """The Python blocks of ``paths`` (default: the README, then docs/concepts.md), in order."""
    paths = paths or (README, DOCS / "concepts.md")
    return [b.text for path in paths for b in blocks(path) if b.language == "python"]


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
    assert len(snippets) == 11
    assert "build_together_batch_defs(" in snippets[0] and "TogetherClient()" in snippets[10]


def test_code_location_snippets_run_as_pasted(
    fresh_location: Path, emulator: Any, instance: dg.DagsterInstance
) -> None:
    # The first ten snippets build on each other (the second reuses `reviews`, ...).
    code = "\n\n".join(python_snippets()[:10])
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

    # The README's templates: each builds its requests from a table with those columns.
    table = pa.table(
        {
            "review_id": ["r1"],
            "text": ["Great!"],
            "photo": ["https://example.com/r1.png"],
            "recording_url": ["https://example.com/r1.mp3"],
        }
    )
    for template in (module.templated, module.described, module.structured):
        [request] = list(build_requests(table, template=template, id_column="review_id"))
        assert request["body"]["model"] == template.model
    [audio] = list(
        build_requests(
            table,
            template=module.transcribed,
            id_column="review_id",
            endpoint="/v1/audio/transcriptions",
        )
    )
    assert audio["body"]["file"] == "https://example.com/r1.mp3"
    assert module.structured.schema is not None


def test_plain_python_snippet_runs_as_pasted(fresh_location: Path) -> None:
    with open("requests.jsonl", "w") as handle:
        for i in range(3):
            body = {"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}]}
            handle.write(json.dumps({"custom_id": f"r{i}", "body": body}) + "\n")
    scope: dict[str, Any] = {}
    exec(python_snippets()[10], scope)
    scope["client"].close()
    assert scope["summary"].counts["succeeded"] == 3
    assert (fresh_location / "results.parquet").exists()


def test_troubleshooting_snippets_show_and_cancel_a_batch_stuck_in_validating(
    api_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dagster_together import TogetherClient
    from dagster_together.emulator import Emulator

    listing, cancel = python_snippets(DOCS / "troubleshooting.md")
    requests = tmp_path / "requests.jsonl"
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    requests.write_text(json.dumps({"custom_id": "r1", "body": body}) + "\n")
    # A batch that would stay VALIDATING for an hour.
    with Emulator(api_key=api_key, validate_seconds=3600, cancel_seconds=0.1) as emu:
        monkeypatch.setenv("TOGETHER_API_KEY", api_key)
        monkeypatch.setenv("TOGETHER_BASE_URL", emu.base_url)
        with TogetherClient() as setup:
            stuck = setup.batches.create_batch(setup.files.upload(str(requests)).id)

            scope: dict[str, Any] = {}
            exec(listing, scope)
            assert f"{stuck.id} VALIDATING" in capsys.readouterr().out
            [example_id] = re.findall(r'batch_id = "([0-9a-f-]{36})"', cancel)
            exec(cancel.replace(example_id, stuck.id), scope)
            assert capsys.readouterr().out.strip() == "CANCELING"
            assert str(setup.batches.wait(stuck.id, poll_interval=0.05).status) == "CANCELLED"
            scope["client"].close()
