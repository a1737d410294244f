"""``python -m scripts.screenshots`` (``make screenshots``): the example project in the Dagster UI,
driven in Debian's Chromium as a user would, one screenshot per step, into ``docs/images/``.

It starts what ``make dev`` starts, each in its own process: the local Together emulator, the
webserver and the daemon (which runs the batch sensor) on a fresh Dagster instance in a temporary
directory. Then, in the browser: the asset graph; ``reviews`` and ``reviews_batches`` selected and
materialised (the submit needs its input materialised first); the submit run until it succeeds;
the results run the sensor launches; the results partition with its metadata (row count, preview,
tokens, cost); the run that wrote it; the asset checks; the asset graph once more, with the
results in it. Every step checks what a user would look for and fails with a clear message.

The browser test (``tests/test_ui_browser.py``) runs the same walk through into a temporary
folder. Chromium comes from Debian (``scripts/install-chromium``, run by ``make install`` when
root); Playwright only drives it: nothing here downloads a browser.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import httpx

from example_project.local_emulator import REPO_ROOT, ensure_emulator, stop_emulator
from example_project.pipeline import LOCAL_EMULATOR_API_KEY, N_REVIEWS

if TYPE_CHECKING:
    from playwright.sync_api import FloatRect, Locator, Page

__all__ = [
    "CHROMIUM",
    "IMAGES_DIR",
    "SHOTS",
    "ExampleUI",
    "WalkThrough",
    "browser_unavailable",
    "chromium_page",
    "main",
    "running_example_ui",
    "walk_through",
]

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium (package ``chromium``): the only browser this project drives."""

IMAGES_DIR = REPO_ROOT / "docs" / "images"
WIDTH, HEIGHT = 1600, 900

SHOTS = {
    "asset-graph-before": "The asset graph of the reviews group, nothing materialised yet.",
    "materialize-selected": "reviews and reviews_batches selected: Materialize selected (2).",
    "submit-run": "The submit run (reviews + reviews_batches) succeeded.",
    "runs": "The runs: the manual submit, and the results run launched by the sensor.",
    "results-run": "The results run: launched by reviews_batch_sensor for the batch.",
    "results-partition": "The results partition (one per batch): row count, location, preview.",
    "results-tokens-cost": "The same partition's statuses, tokens and cost.",
    "checks": "The asset checks of the results: completeness and error_rate passed.",
    "asset-graph": "The asset graph after the walk through: the results materialised.",
}
"""Each screenshot's file name (``<name>.png``) and what it shows, in the order taken."""

LOCATION = "example_project"
RESULTS_ASSET = "reviews_results"
SENSOR = "reviews_batch_sensor"
CHECKS = ("completeness", "error_rate")

# Generous for a busy 2-core machine, bounded so that a stuck step fails instead of hanging:
# starting the webserver and the daemon; a run (a fresh process importing Dagster and the code
# location); the sensor's next tick plus the results run.
START_SECONDS = 90.0
RUN_SECONDS = 90.0
UI_MS = 20_000

# The emulator finishes a batch quickly: the sensor's next tick after the submit finds it done.
_EMULATOR_VALIDATE_SECONDS = 0.5
_EMULATOR_RUN_SECONDS = 1.0

# Only the local webserver is reached: none of Chromium's own background traffic (updates, sync,
# QUIC probes), which a machine without internet refuses, and no proxy before 127.0.0.1.
_CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-proxy-server",
]

_DAGSTER_YAML = "telemetry:\n  enabled: false\n"

_LOCATIONS_QUERY = (
    "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
    "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
)


def browser_unavailable() -> str | None:
    """Why the walk through cannot run here (no Chromium, no Playwright), or ``None``."""
    if not CHROMIUM.exists():
        return (
            f"Chromium is not installed ({CHROMIUM} is missing): run `scripts/install-chromium` "
            "as root (`make install` does when run as root), or `sudo apt-get install chromium`."
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed: `pip install -e '.[test]'`."
    return None


# -- the example, running ---------------------------------------------------------------------
@dataclass(frozen=True)
class ExampleUI:
    """The example project served by a webserver, with the daemon running its sensor.

    Attributes:
        url: the webserver, ``http://127.0.0.1:<port>``.
        dagster_home: the instance's directory (runs, materialisations, sensor ticks).
        output_dir: where the pipeline writes its files (inputs, outputs, Parquet).
        logs: the directory of the webserver's, daemon's and emulator's logs.
    """

    url: str
    dagster_home: Path
    output_dir: Path
    logs: Path

    def log_tails(self, chars: int = 3000) -> str:
        """The end of every log, for a failure message."""
        parts = []
        for log in sorted(self.logs.glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(
    command: list[str], log: Path, env: dict[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command,
            cwd=str(cwd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own process group: the code servers and run workers it starts stop with it.
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group (a clean shutdown), then SIGKILL to whatever is left of it
    (a code server or run worker may outlive the leader by a moment)."""
    for sig, wait_seconds in ((signal.SIGTERM, 20.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(wait_seconds)
        except subprocess.TimeoutExpired:
            pass


def _wait_until_loaded(ui: ExampleUI, procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Until the webserver answers and has loaded the code location."""
    deadline = time.monotonic() + START_SECONDS
    with httpx.Client(base_url=ui.url, timeout=10, trust_env=False) as http:
        while True:
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args!r} exited early:\n{ui.log_tails()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"The webserver did not load the example:\n{ui.log_tails()}")
            try:
                data = http.post("/graphql", json={"query": _LOCATIONS_QUERY}).json()["data"]
                [entry] = [
                    e for e in data["workspaceOrError"]["locationEntries"] if e["name"] == LOCATION
                ]
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                entry = None  # not listening yet
            if entry and entry["loadStatus"] == "LOADED":
                loaded = entry["locationOrLoadError"] or {}
                if loaded.get("__typename") == "PythonError":
                    raise RuntimeError(f"The example did not load: {loaded.get('message')}")
                return
            time.sleep(0.5)


@contextmanager
def running_example_ui(workdir: Path) -> Iterator[ExampleUI]:
    """The emulator, the webserver and the daemon on a fresh instance in ``workdir``.

    The code location is the example pipeline (:mod:`scripts.screenshots_location`), on an
    emulator of its own (a free port, not ``make dev``'s 8765) and files in ``workdir``.
    """
    logs = workdir / "logs"
    home = workdir / "dagster_home"
    for folder in (logs, home):
        folder.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(_DAGSTER_YAML)
    # Create the instance's SQLite storage here, once: the webserver and the daemon starting
    # on an empty directory at the same moment can both stamp its schema and break it.
    with dg.DagsterInstance.from_config(str(home)):
        pass
    (workdir / "workspace.yaml").write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: scripts.screenshots_location\n"
        f"      location_name: {LOCATION}\n"
        f"      working_directory: {REPO_ROOT}\n"
    )
    emulator = ensure_emulator(
        port=_free_port(),
        state_dir=logs,  # its log beside the others; its files in logs/emulator
        validate_seconds=_EMULATOR_VALIDATE_SECONDS,
        run_seconds=_EMULATOR_RUN_SECONDS,
    )
    ui = ExampleUI(f"http://127.0.0.1:{_free_port()}", home, workdir / "data", logs)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "TOGETHER_BASE_URL": emulator.base_url,
        "TOGETHER_API_KEY": LOCAL_EMULATOR_API_KEY,
        "TOGETHER_OUTPUT_URL": str(ui.output_dir),
        "PYTHONUNBUFFERED": "1",
    }
    bin_dir = Path(sys.executable).parent
    port = ui.url.rsplit(":", 1)[1]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            _start(
                [str(bin_dir / "dagster-webserver"), "-w", "workspace.yaml"]
                + ["-h", "127.0.0.1", "-p", port],
                logs / "webserver.log",
                env,
                workdir,
            )
        )
        procs.append(
            _start(
                [str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                logs / "daemon.log",
                env,
                workdir,
            )
        )
        _wait_until_loaded(ui, procs)
        yield ui
    finally:
        for proc in procs:
            _stop(proc)
        stop_emulator(emulator)


@contextmanager
def chromium_page() -> Iterator[Page]:
    """A page of Debian's Chromium, headless, at the screenshots' size."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=_CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.set_default_timeout(UI_MS)
            yield page
        finally:
            browser.close()


# -- the walk through -------------------------------------------------------------------------
@dataclass(frozen=True)
class WalkThrough:
    """What the walk through saw, for the caller to check against the instance.

    Attributes:
        batch_id: the results partition that was opened (the batch's id).
        results_run: the short id of the results run, as the UI shows it.
        shots: the screenshots taken, in order.
    """

    batch_id: str
    results_run: str
    shots: list[Path]


class _Camera:
    def __init__(self, page: Page, folder: Path) -> None:
        self.page, self.folder, self.shots = page, folder, list[Path]()
        folder.mkdir(parents=True, exist_ok=True)

    def shoot(self, name: str) -> None:
        assert name in SHOTS, name
        self.page.mouse.move(0, HEIGHT - 1)  # no tooltip or hover left in the picture
        self.page.wait_for_timeout(400)  # let the UI settle after the last update
        path = self.folder / f"{name}.png"
        self.page.screenshot(path=str(path))
        self.shots.append(path)


def _skip_welcome_dialog(page: Page) -> None:
    # A fresh instance greets the first visit with a newsletter dialog: skip it whenever it shows.
    page.add_locator_handler(
        page.get_by_text("Join the Dagster community"),
        lambda: page.get_by_role("button", name="Skip").click(),
    )


def _graph(page: Page) -> Locator:
    return page.locator("svg foreignObject")


def _open_reviews_graph(page: Page, url: str) -> None:
    """The asset graph filtered to the reviews group, its nodes at a readable size."""
    page.goto(f"{url}/asset-groups~group%3Areviews/")
    _graph(page).get_by_text("reviews_batches", exact=True).wait_for()
    page.get_by_role("button", name="panel_show_right", exact=True).click()  # hide the asset list
    # The graph opens zoomed to fit, too small for a node's details: zoom in until they show.
    for _ in range(6):
        if _graph(page).get_by_text("Latest event").first.is_visible():
            break
        page.get_by_role("button", name="zoom_in", exact=True).click()
        page.wait_for_timeout(300)
    _center_graph(page)


def _center_graph(page: Page) -> None:
    """Drag the graph so that its nodes sit in the middle of the canvas."""
    svg = page.locator("svg").filter(has=page.locator("foreignObject")).first
    area = svg.locator("xpath=../..").bounding_box()  # the canvas, its toolbar on top
    boxes = [b for b in (n.bounding_box() for n in _graph(page).all()) if b]
    if area is None or not boxes:
        return
    toolbar = 56.0
    canvas_x, canvas_width = area["x"], area["width"]
    canvas_y, canvas_height = area["y"] + toolbar, area["height"] - toolbar
    left = min(b["x"] for b in boxes)
    right = max(b["x"] + b["width"] for b in boxes)
    top = min(b["y"] for b in boxes)
    bottom = max(b["y"] + b["height"] for b in boxes)
    dx = canvas_x + canvas_width / 2 - (left + right) / 2
    dy = canvas_y + canvas_height / 2 - (top + bottom) / 2
    _drag_graph(page, area, dx, dy)


def _drag_into_view(page: Page, node: Locator) -> None:
    """Drag the graph right until ``node`` clears the canvas's left edge (a side panel that
    opens on a click narrows the canvas and can push the nodes left of the selection away)."""
    svg = page.locator("svg").filter(has=page.locator("foreignObject")).first
    area = svg.locator("xpath=../..").bounding_box()
    box = node.bounding_box()
    if area is None or box is None:
        return
    margin = 24.0
    if box["x"] < area["x"] + margin:
        _drag_graph(page, area, area["x"] + margin - box["x"], 0.0)


def _drag_graph(page: Page, area: FloatRect, dx: float, dy: float) -> None:
    """Drag the graph's canvas (``area``, its toolbar on top) by ``dx``, ``dy`` pixels."""
    # Grab the background above the nodes (the top edge of the canvas is empty).
    x, y = area["x"] + area["width"] / 2, area["y"] + 56.0 + 12
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx, y + dy, steps=10)
    page.mouse.up()
    page.wait_for_timeout(300)


def _submitted_batch(ui: ExampleUI) -> str:
    """The id of the one batch the submit made (a partition of ``reviews_batches``)."""
    with dg.DagsterInstance.from_config(str(ui.dagster_home)) as instance:
        [batch_id] = instance.get_dynamic_partitions("reviews_batches")
    return batch_id


def _nav(page: Page, item: str) -> Locator:
    """An item of the navigation on the left."""
    return page.get_by_role("link").filter(has_text=re.compile(rf"^{item}$")).first


def _run_links(page: Page) -> Locator:
    """The links to runs, named by a run's short id as the UI shows it."""
    return page.locator("a[href*='/runs/']").filter(has_text=re.compile(r"^[0-9a-f]{8}$"))


def walk_through(page: Page, ui: ExampleUI, shots_dir: Path) -> WalkThrough:
    """Drive the UI through the example, a screenshot per step into ``shots_dir``.

    Raises ``AssertionError`` (Playwright's ``expect``) or Playwright's ``TimeoutError`` at the
    step that failed, after saving ``failure.png`` and printing the end of the logs.
    """
    camera = _Camera(page, shots_dir)
    _skip_welcome_dialog(page)
    try:
        return _walk(page, ui, camera)
    except Exception:
        page.screenshot(path=str(shots_dir / "failure.png"))
        print(
            f"Screen at the failure: {shots_dir / 'failure.png'}\n{ui.log_tails()}", file=sys.stderr
        )
        raise


def _walk(page: Page, ui: ExampleUI, camera: _Camera) -> WalkThrough:
    from playwright.sync_api import expect

    run_ms = int(RUN_SECONDS * 1000)

    # 1. The asset graph; select the submit asset and its input, and materialise both.
    _open_reviews_graph(page, ui.url)
    camera.shoot("asset-graph-before")
    _graph(page).get_by_text("reviews_batches", exact=True).click()
    reviews = _graph(page).get_by_text("reviews", exact=True)
    _drag_into_view(page, reviews)
    reviews.click(modifiers=["Shift"])
    materialize = page.get_by_role("button", name="Materialize selected (2)")
    expect(materialize).to_be_enabled()
    camera.shoot("materialize-selected")
    materialize.click()

    # 2. The submit run (the only run so far), from the runs list, until it succeeds.
    # Launched: a toast says so for a few seconds, and the nodes show the run.
    launched = page.get_by_text(re.compile(r"^Launched run"))
    expect(
        launched.or_(_graph(page).get_by_text(re.compile(r"^Materializing"))).first
    ).to_be_visible()
    _nav(page, "Runs").click()
    _run_links(page).first.click()
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]+"))
    expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=run_ms)
    camera.shoot("submit-run")

    # 3. The runs: the sensor's results run appears once the batch is done, and succeeds.
    _nav(page, "Runs").click()
    deadline = time.monotonic() + RUN_SECONDS
    successes = page.get_by_text("Success", exact=True)
    while successes.count() < 2 or not page.get_by_text(SENSOR).first.is_visible():
        if page.get_by_text("Failure", exact=True).count():
            raise AssertionError("a run failed: see the runs list")
        if time.monotonic() > deadline:
            raise AssertionError("the sensor's results run did not succeed in time")
        page.wait_for_timeout(2000)
        page.reload()  # what a user does instead of waiting for the list's own refresh
        page.get_by_text("Launched by", exact=True).wait_for()
    camera.shoot("runs")

    # 4. The results run (the newest): launched by the sensor for the batch, succeeded.
    batch_id = _submitted_batch(ui)  # the partition to look for: the UI shows it by this id
    run_link = _run_links(page).first
    results_run = run_link.inner_text().strip()
    run_link.click()
    expect(page.get_by_text(f"Launched by {SENSOR}")).to_be_visible()
    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    expect(page.get_by_text(f"partition: {batch_id}")).to_be_visible()
    camera.shoot("results-run")

    # 5. The results partition of the batch, and its metadata.
    page.goto(f"{ui.url}/assets/{RESULTS_ASSET}")
    page.get_by_role("tab", name="Partitions").click()
    page.get_by_title(batch_id, exact=True).first.click()
    expect(page.get_by_text("Materialized", exact=True).first).to_be_visible()
    metadata = page.locator("tr")
    expect(metadata.filter(has_text="dagster/row_count")).to_contain_text(str(N_REVIEWS))
    expect(metadata.filter(has_text="together/preview").first).to_contain_text("succeeded")
    camera.shoot("results-partition")
    cost = metadata.filter(has_text=re.compile(r"^together/cost_usd"))
    cost.scroll_into_view_if_needed()
    expect(cost).to_contain_text(re.compile(r"0\.\d+"))
    expect(metadata.filter(has_text=re.compile(r"^together/total_tokens"))).to_be_visible()
    succeeded = metadata.filter(has_text=re.compile(r"^together/n_succeeded"))
    expect(succeeded).to_contain_text(str(N_REVIEWS))
    page.mouse.wheel(0, 200)  # the cost row mid-screen, the token rows above it
    camera.shoot("results-tokens-cost")

    # 6. The asset checks of the results.
    page.goto(f"{ui.url}/assets/{RESULTS_ASSET}?view=checks")
    for check in CHECKS:
        expect(page.get_by_text(check, exact=True).first).to_be_visible()
    expect(page.get_by_text("Succeeded", exact=True)).to_have_count(len(CHECKS))
    expect(page.get_by_text("Passed", exact=True)).to_be_visible()
    camera.shoot("checks")

    # 7. The asset graph again, the results in it.
    _open_reviews_graph(page, ui.url)
    expect(_graph(page).get_by_text(f"{len(CHECKS)} / {len(CHECKS)} Passed")).to_be_visible()
    camera.shoot("asset-graph")
    return WalkThrough(batch_id=batch_id, results_run=results_run, shots=camera.shots)


# -- the script -------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Retake the screenshots into ``--out`` (``docs/images``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=IMAGES_DIR, help="default: %(default)s")
    args = parser.parse_args(argv)
    reason = browser_unavailable()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    # `kill <pid>` stops the processes this starts, as Ctrl-C does: the cleanup runs either way.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="dagster-together-ui-"))
    print("Starting the example (emulator, webserver, daemon)...", flush=True)
    try:
        with running_example_ui(workdir) as ui, chromium_page() as page:
            print(f"Driving {ui.url} in Chromium...", flush=True)
            done = walk_through(page, ui, workdir / "shots")
    except BaseException:
        print(f"Failed: the screenshots and logs are kept in {workdir}", file=sys.stderr)
        raise
    args.out.mkdir(parents=True, exist_ok=True)
    for shot in done.shots:
        shutil.copyfile(shot, args.out / shot.name)
        print(f"{args.out / shot.name}: {SHOTS[shot.stem]}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
