"""``TogetherBatchComponent`` loaded from ``defs.yaml`` the way a Dagster project loads it (a
defs folder sandbox), then run end to end against the emulator: submit, a real sensor tick, the
results run launched from its run request."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster.components.testing import DefsFolderSandbox, create_defs_folder_sandbox

import dagster_together
from dagster_together.components import TogetherBatchComponent
from tests.helpers import modules_added_by_import, wait_terminal

TYPE = "dagster_together.components.TogetherBatchComponent"

PROMPTS_PY = """
import dagster as dg
import pyarrow as pa


@dg.asset
def reviews() -> pa.Table:
    return pa.table(
        {"review_id": [1, 2, 3], "text": ["Great!", "Broke after a day.", "It is a lamp."]}
    )
"""

RESOURCES_PY = """
import dagster as dg
from dagster_together import TogetherResource


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(
        resources={
            "together_eu": TogetherResource(
                api_key=dg.EnvVar("TOGETHER_EU_KEY"), base_url="https://eu.example.invalid/v1"
            )
        }
    )
"""


@pytest.fixture
def sandbox() -> Iterator[DefsFolderSandbox]:
    with create_defs_folder_sandbox() as box:
        yield box


def write_component(sandbox: DefsFolderSandbox, folder: str, attributes: dict[str, Any]) -> Path:
    path = sandbox.defs_folder_path / folder
    path.mkdir(parents=True, exist_ok=True)
    (path / "defs.yaml").write_text(yaml.safe_dump({"type": TYPE, "attributes": attributes}))
    return path


def write_yaml(sandbox: DefsFolderSandbox, folder: str, text: str) -> Path:
    path = sandbox.defs_folder_path / folder
    path.mkdir(parents=True, exist_ok=True)
    (path / "defs.yaml").write_text(textwrap.dedent(text))
    return path


def test_defs_yaml_loads_and_runs_end_to_end(
    sandbox: DefsFolderSandbox,
    emulator: Any,
    api_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Names the library would fall back to are unset: the YAML settings alone must reach the API.
    monkeypatch.delenv("TOGETHER_API_KEY", raising=False)
    monkeypatch.delenv("TOGETHER_BASE_URL", raising=False)
    monkeypatch.setenv("MY_TOGETHER_KEY", api_key)
    monkeypatch.setenv("MY_TOGETHER_URL", emulator.base_url)
    (sandbox.defs_folder_path / "prompts.py").write_text(PROMPTS_PY)
    write_yaml(
        sandbox,
        "together",
        f"""
        type: {TYPE}
        attributes:
          name: reviews
          prompts: reviews
          storage_url: {tmp_path / "store"}
          template:
            model: meta-llama/Llama-3.3-70B-Instruct-Turbo
            prompt_column: text
            system_prompt: "Classify the sentiment: positive, negative or neutral."
            body: {{max_tokens: 5}}
          id_column: review_id
          group_name: together
          sensor: {{minimum_interval_seconds: 30}}
          resource:
            api_key: {{env: MY_TOGETHER_KEY}}
            base_url: "{{{{ env.MY_TOGETHER_URL }}}}"
        """,
    )

    with sandbox.build_all_defs() as defs:
        dg.Definitions.validate_loadable(defs)
        keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
        assert keys == {"reviews", "reviews_batches", "reviews_results", "reviews_final"}
        submit_def = defs.resolve_assets_def("reviews_batches")
        assert submit_def.group_names_by_key[submit_def.key] == "together"
        sensor = defs.resolve_sensor_def("reviews_batch_sensor")
        assert sensor.minimum_interval_seconds == 30
        results_job = defs.resolve_job_def("reviews_results_job")
        # The component's resource is bound to its own assets: none in the Definitions.
        assert "together" not in (defs.resources or {})
        assert sensor.required_resource_keys == set()

        with dg.instance_for_test() as instance:
            # Assets resolved from the definitions come with the component's resource bound.
            submitted = dg.materialize(
                [defs.resolve_assets_def("reviews"), submit_def], instance=instance
            )
            assert submitted.success
            [mat] = submitted.asset_materializations_for_node(submit_def.node_def.name)
            [batch_id] = mat.metadata["together/batch_ids"].value
            wait_terminal(emulator)

            with dg.build_sensor_context(instance=instance, definitions=defs) as context:
                tick = sensor(context)
            assert isinstance(tick, dg.SensorResult)
            [request] = tick.run_requests or []
            assert request.partition_key == batch_id

            collected = results_job.execute_in_process(
                instance=instance, partition_key=request.partition_key, tags=request.tags
            )
            assert collected.success
            [result_mat] = [
                m
                for m in collected.asset_materializations_for_node("reviews_results")
                if m.asset_key == dg.AssetKey("reviews_results")
            ]
            # The submission's only batch: its final table is reported by the same run.
            [final_mat] = [
                m
                for m in collected.asset_materializations_for_node("reviews_results")
                if m.asset_key == dg.AssetKey("reviews_final")
            ]
            assert final_mat.metadata["dagster/row_count"].value == 3
            assert result_mat.metadata["dagster/row_count"].value == 3
            assert result_mat.metadata["together/n_succeeded"].value == 3
            checks = {e.check_name: e.passed for e in collected.get_asset_check_evaluations()}
            assert checks == {"completeness": True, "error_rate": True}


def test_components_with_different_accounts_live_side_by_side(sandbox: DefsFolderSandbox) -> None:
    (sandbox.defs_folder_path / "prompts.py").write_text(PROMPTS_PY)
    base = {"prompts": "reviews", "storage_url": "/tmp/unused"}
    write_component(sandbox, "a", {**base, "name": "a"})
    write_component(
        sandbox,
        "eu",
        {
            **base,
            "name": "eu",
            "resource": {
                "api_key": {"env": "TOGETHER_EU_KEY"},
                "base_url": "https://eu.example.invalid/v1",
            },
        },
    )
    with sandbox.build_all_defs() as defs:
        assert "together" not in (defs.resources or {})  # nothing global to clash
        keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
        assert {"a_batches", "a_results", "eu_batches", "eu_results"} <= keys
        assert defs.resolve_sensor_def("eu_batch_sensor").required_resource_keys == set()
    with sandbox.build_component_tree() as tree:
        eu = tree.load_component(sandbox.defs_folder_path / "eu")
        a = tree.load_component(sandbox.defs_folder_path / "a")
        # The keys stay environment variable references: never a literal in the UI's config.
        assert eu.get_resource().api_key.env_var_name == "TOGETHER_EU_KEY"
        assert eu.get_resource().base_url == "https://eu.example.invalid/v1"
        assert a.get_resource().api_key.env_var_name == "TOGETHER_API_KEY"


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"max_eror_rate": 0.1}, "max_eror_rate"),  # a typo is an error, not ignored
        ({"resource": {"api_key": {"env": "K", "default": "x"}}}, "default"),
        (
            {
                "batching": {"endpoint": "/v1/audio/transcriptions"},
                "template": {"model": "m", "prompt_column": "t"},
            },
            "not supported",
        ),
        ({"template": {"model": "m", "prompt_column": "t", "body": {"model": "x"}}}, "may not set"),
        ({"batching": {"max_requests_per_batch": 60_000}}, "between 1 and 50,000"),
        ({"results": {"error_rate_severity": "FATAL"}}, "error_rate_severity"),
        ({"results": {"raw_responses": "some"}}, "raw_responses"),
        ({"prompts": "<your prompts asset>"}, "still the scaffold's placeholder"),
    ],
)
def test_yaml_mistakes_fail_when_the_definitions_load(
    sandbox: DefsFolderSandbox, attributes: dict[str, Any], message: str
) -> None:
    write_component(
        sandbox, "bad", {"name": "r", "prompts": "reviews", "storage_url": "/tmp/x", **attributes}
    )
    with pytest.raises(Exception) as raised:
        with sandbox.build_all_defs():
            pass
    # Dagster wraps the error in one that names the defs.yaml; ours is the cause.
    texts, error = [], raised.value
    while error is not None:
        texts.append(str(error))
        error = error.__cause__ or error.__context__
    assert message in "\n".join(texts)


def test_scaffolded_defs_yaml_says_what_to_edit_then_loads(sandbox: DefsFolderSandbox) -> None:
    path = sandbox.scaffold_component(component_cls=TogetherBatchComponent, defs_path="summaries")
    text = (path / "defs.yaml").read_text()
    # Every assumption is a line to edit, said so in a comment.
    assert text.count("# EDIT") == 3 and "<your prompts asset>" in text
    with pytest.raises(Exception) as raised:
        with sandbox.build_all_defs():
            pass
    assert "prompts is still the scaffold's placeholder" in _messages(raised.value)

    (sandbox.defs_folder_path / "prompts.py").write_text(PROMPTS_PY)
    edited = (
        text.replace("<your prompts asset>", "reviews")
        .replace("<your prompt column>", "text")
        .replace("<your id column>", "review_id")
    )
    (path / "defs.yaml").write_text(edited)
    written = yaml.safe_load(edited)
    assert written["attributes"]["resource"] == {"api_key": {"env": "TOGETHER_API_KEY"}}
    with sandbox.build_component_tree() as tree:
        component = tree.load_component(path)
        assert isinstance(component, TogetherBatchComponent)
        assert str(sandbox.project_root.resolve()) in component.storage_url
        assert tree.build_defs().resolve_job_def("summaries_results_job")


def _messages(error: BaseException | None) -> str:
    texts = []
    while error is not None:
        texts.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(texts)


@pytest.mark.slow  # a fresh interpreter importing dagster
def test_component_import_loads_nothing_heavy() -> None:
    added = modules_added_by_import("dagster", "dagster_together.components")
    heavy = ("httpx", "pyarrow", "fsspec", "s3fs", "botocore", "pandas")
    assert [m for m in added if m.startswith(heavy)] == []


@pytest.mark.skipif(
    not hasattr(dagster_together, "TogetherBatchComponent"),
    reason="dagster_together/__init__.py does not re-export TogetherBatchComponent yet",
)
def test_discovered_through_the_registry_entry_point() -> None:
    """What `dg list components` does: load each `dagster_dg_cli.registry_modules` entry point
    and list its attributes that are component types."""
    from importlib.metadata import entry_points

    [entry_point] = [
        ep
        for ep in entry_points(group="dagster_dg_cli.registry_modules")
        if ep.name == "dagster_together"
    ]
    module = entry_point.load()
    found = {name for name in dir(module) if hasattr(getattr(module, name), "__dg_package_entry__")}
    assert found == {"TogetherBatchComponent"}
    assert module.TogetherBatchComponent is TogetherBatchComponent


def test_yaml_templates_over_columns_with_an_output_schema(sandbox: DefsFolderSandbox) -> None:
    (sandbox.defs_folder_path / "prompts.py").write_text(PROMPTS_PY)
    write_yaml(
        sandbox,
        "extract",
        f"""
        type: {TYPE}
        attributes:
          name: extract
          prompts: reviews
          storage_url: /tmp/unused
          id_column: review_id
          template:
            model: m
            messages:
              - {{role: system, content: "Extract the fields."}}
              - {{role: user, content: "Review {{text}}"}}
            output_schema:
              type: object
              properties:
                sentiment: {{type: string}}
                severity: {{type: integer}}
        """,
    )
    with sandbox.build_all_defs() as defs:
        results = defs.resolve_assets_def("extract_results")
        assert {c.name for c in results.check_specs} == {
            "completeness",
            "error_rate",
            "invalid_output_rate",
        }


AUDIO_PY = """
import dagster as dg
import pyarrow as pa


@dg.asset
def calls() -> pa.Table:
    return pa.table(
        {
            "call_id": ["c1", "c2"],
            "url": ["https://example.invalid/a.mp3", "https://example.invalid/b.mp3"],
        }
    )
"""


def test_yaml_audio_batch_runs_end_to_end(
    sandbox: DefsFolderSandbox,
    emulator: Any,
    api_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MY_TOGETHER_KEY", api_key)
    (sandbox.defs_folder_path / "calls.py").write_text(AUDIO_PY)
    write_yaml(
        sandbox,
        "transcripts",
        f"""
        type: {TYPE}
        attributes:
          name: transcripts
          prompts: calls
          storage_url: {tmp_path / "store"}
          id_column: call_id
          audio:
            model: openai/whisper-large-v3
            audio_column: url
            language: en
          wait: {{poll_interval: 0.05}}
          resource:
            api_key: {{env: MY_TOGETHER_KEY}}
            base_url: {emulator.base_url}
        """,
    )
    with sandbox.build_all_defs() as defs:
        with dg.instance_for_test() as instance:
            result = dg.materialize(
                [defs.resolve_assets_def("calls"), defs.resolve_assets_def("transcripts_results")],
                instance=instance,
            )
            assert result.success
            [mat] = result.asset_materializations_for_node("transcripts_results")
            import pyarrow.parquet as pq

            table = pq.read_table(mat.metadata["dagster/uri"].value)
    assert table["call_id"].to_pylist() == ["c1", "c2"]
    assert table["status"].to_pylist() == ["succeeded", "succeeded"]
    assert all(table["content"].to_pylist())  # the transcript's text
    [batch] = emulator.batches()
    assert batch["endpoint"] == "/v1/audio/transcriptions"
