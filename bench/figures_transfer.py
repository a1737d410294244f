"""Moving bytes: retrieve_content to local disk (vs curl -o) and to S3 (vs s3fs put), and the
upload of a 100 MB input file (vs curl -T to the same presigned URL).

The emulator and moto run in their own processes. Runs alternate ours / reference so that both
see the same machine load; the best of ``repeats`` runs of each is compared.
"""

from __future__ import annotations

import os
import resource
import statistics
from typing import Any

from bench import data
from bench.context import Context
from bench.measure import peak_rss, reset_peak_rss, rss, run_command, run_task, timed
from bench.report import Row, megabytes, rate, times
from bench.servers import API_KEY, EmulatorProcess, MotoProcess

__all__ = ["FIGURES"]


# -- child tasks ---------------------------------------------------------------------------------
def _measured(t: dict[str, float], size: int, rss_before: int, peak: int) -> dict[str, Any]:
    """What every transfer task reports: clock (from ``timed``), bytes moved and RSS."""
    return {
        "seconds": t["seconds"],
        "cpu_seconds": t["cpu_seconds"],
        "bytes": size,
        "rss_before": rss_before,
        "peak_rss": peak,
    }


def task_retrieve(
    base_url: str, file_id: str, output: str, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``files.retrieve_content`` of one file to ``output`` (a path or an s3:// URL)."""
    from dagster_together.client import TogetherClient

    if output.startswith("s3://"):
        import s3fs  # noqa: F401  (imported before the clock, as for the reference)
    client = TogetherClient(api_key=API_KEY, base_url=base_url)
    before = rss()
    with timed() as t:
        result = client.files.retrieve_content(
            file_id, output=output, storage_options=storage_options, progress=False
        )
    client.close()
    return _measured(t, result.size, before, peak_rss())


def task_s3fs_put(local: str, remote: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """The S3 reference: ``s3fs.S3FileSystem(...).put(local, remote)``."""
    import s3fs

    fs = s3fs.S3FileSystem(**storage_options)
    before = rss()
    with timed() as t:
        fs.put(local, remote)
    return _measured(t, os.path.getsize(local), before, peak_rss())


def task_upload(
    base_url: str, path: str, warmup_path: str, check: bool = True, checksum: str | None = None
) -> dict[str, Any]:
    """``files.upload(path, check=check, checksum=checksum)``. The submit asset calls it with
    ``check=False`` and the sha256 its write pass computed; ``check=True`` is the default a user
    gets. RSS growth is measured from after a warm-up upload of a tiny file (imports done,
    connection pool ready), the same warm-up for every mode."""
    from dagster_together.client import TogetherClient

    client = TogetherClient(api_key=API_KEY, base_url=base_url)
    warm = client.files.upload(warmup_path)
    client.files.delete(warm.id)
    before = reset_peak_rss()
    with timed() as t:
        uploaded = client.files.upload(path, check=check, checksum=checksum)
    peak = peak_rss()
    client.files.delete(uploaded.id)  # the next run must not be answered "409: same bytes"
    client.close()
    return {**_measured(t, uploaded.bytes, before, peak), "growth": peak - before}


# -- figures -------------------------------------------------------------------------------------
def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _curl(*args: str) -> dict[str, float]:
    """curl with ``args``: its own ``time_total`` (connect to last byte) as ``seconds``, the
    process's wall time, CPU seconds (its whole life) and peak RSS. Figures compare with
    ``time_total``: our side is timed around the call in a warm process, so curl's start and
    exit (10-50 ms here) must not count against curl."""
    cpu = _children_cpu_seconds()  # curl is the only child reaped in between
    result = run_command(["curl", "-sS", "-f", "-w", "%{stderr}%{time_total}\n", *args])
    return {
        "seconds": float(result.stderr.strip().splitlines()[-1]),
        "process_seconds": result.seconds,
        "cpu_seconds": _children_cpu_seconds() - cpu,
        "max_rss": result.max_rss,
    }


def _curl_put(path: str, url: str) -> dict[str, float]:
    """``curl -T path url``, the answer discarded."""
    return _curl("-o", os.devnull, "-T", path, url)


def _throughput_row(
    name: str,
    figure: str,
    size: int,
    best_ours: float,
    best_ref: float,
    reference: str,
    values: dict[str, Any],
    cpu: tuple[float, float] | None = None,
) -> Row:
    """Our throughput beside the reference's (``reference`` names it); target >= 0.8x.
    ``cpu``: (ours, the reference's) CPU seconds, shown beside."""
    ratio = best_ref / best_ours
    ours_cpu, ref_cpu = (f", {c:.2f} CPU-s" for c in cpu) if cpu else ("", "")
    return Row(
        name=name,
        figure=figure,
        ours=f"{rate(size / best_ours)}{ours_cpu}",
        reference=f"{rate(size / best_ref)} ({reference}{ref_cpu})",
        ratio=times(ratio),
        target=">= 0.8x",
        passed=ratio >= 0.8,
        values=values,
    )


def _peak_rss_row(
    name: str, figure: str, peak: int, reference: str, *, limit_mb: int, values: dict[str, Any]
) -> Row:
    """Our peak RSS (or its growth) against an absolute limit of ``limit_mb`` MB."""
    return Row(
        name=name,
        figure=figure,
        ours=megabytes(peak),
        reference=reference,
        ratio="-",
        target=f"<= {limit_mb} MB",
        passed=peak <= limit_mb * 1e6,
        values=values,
    )


def _retrieve_rows(
    name: str,
    where: str,
    size: int,
    best_ours: float,
    best_ref: float,
    peak: int,
    *,
    reference: str,
    reference_rss: str,
    limit_mb: int,
    values: dict[str, Any],
    cpu: tuple[float, float] | None = None,
) -> list[Row]:
    """A retrieve_content figure's two rows: throughput (and CPU seconds) and our peak RSS."""
    label = f"retrieve_content, {size / 1e9:.1f} GB to {where}"
    throughput = f"{label}: throughput"
    return [
        _throughput_row(name, throughput, size, best_ours, best_ref, reference, values, cpu),
        _peak_rss_row(
            f"{name}_rss",
            f"{label}: peak RSS",
            peak,
            reference_rss,
            limit_mb=limit_mb,
            values=values,
        ),
    ]


def retrieve_local(ctx: Context) -> list[Row]:
    """retrieve_content of a 1 GB file to local disk vs ``curl -o`` of the same URL."""
    size = ctx.sizes.big_bytes
    source = data.big_file(size)
    ours: list[dict[str, Any]] = []
    ref: list[dict[str, float]] = []
    with EmulatorProcess() as emu:
        file_id = emu.add_file(source)
        url = f"{emu.base_url}/files/{file_id}/content"
        # About a second per side: as many repeats as the short figures, since the kernel's
        # copies (most of both sides' time) vary from run to run.
        for _ in range(max(ctx.sizes.repeats_long, ctx.sizes.repeats)):
            target = ctx.path("download.jsonl")
            ours.append(
                run_task(task_retrieve, base_url=emu.base_url, file_id=file_id, output=str(target))
            )
            target.unlink()
            ref.append(_curl("-H", f"Authorization: Bearer {API_KEY}", "-o", str(target), url))
            target.unlink()
    best_ours = min(float(r["seconds"]) for r in ours)
    best_ref = min(r["seconds"] for r in ref)
    ratio = best_ref / best_ours  # throughput ratio
    peak = max(int(r["peak_rss"]) for r in ours)
    # CPU seconds move much less with the machine's load than wall seconds: the median of each
    # side is shown beside the throughput (curl's counts its whole process, ours the call).
    cpu_ours = statistics.median(float(r["cpu_seconds"]) for r in ours)
    cpu_ref = statistics.median(r["cpu_seconds"] for r in ref)
    values = {
        "bytes": size,
        "ours_seconds": [r["seconds"] for r in ours],
        "ours_cpu_seconds": [r["cpu_seconds"] for r in ours],
        "curl_seconds": [r["seconds"] for r in ref],
        "curl_cpu_seconds": [r["cpu_seconds"] for r in ref],
        "cpu_ratio_median": cpu_ours / cpu_ref,
        "ours_peak_rss": peak,
        "ours_rss_before": ours[0]["rss_before"],
        "curl_max_rss": max(r["max_rss"] for r in ref),
        "throughput_ratio": ratio,
    }
    return _retrieve_rows(
        "retrieve_local",
        "local disk",
        size,
        best_ours,
        best_ref,
        peak,
        reference="curl -o",
        cpu=(cpu_ours, cpu_ref),
        reference_rss=f"{megabytes(max(int(r['max_rss']) for r in ref))} (curl)",
        limit_mb=100,
        values=values,
    )


def retrieve_s3(ctx: Context) -> list[Row]:
    """retrieve_content of a 1 GB file to s3:// (moto) vs ``s3fs.put`` of the same local file."""
    size = ctx.sizes.big_bytes
    source = data.big_file(size)
    ours: list[dict[str, Any]] = []
    ref: list[dict[str, Any]] = []
    with EmulatorProcess() as emu, MotoProcess() as moto:
        file_id = emu.add_file(source)
        options = moto.storage_options
        for i in range(ctx.sizes.repeats_long):
            ours.append(
                run_task(
                    task_retrieve,
                    base_url=emu.base_url,
                    file_id=file_id,
                    output=f"{moto.bucket_url}/ours-{i}.jsonl",
                    storage_options=options,
                )
            )
            moto.reset()  # moto keeps objects in memory: start every run from an empty server
            ref.append(
                run_task(
                    task_s3fs_put,
                    local=str(source),
                    remote=f"{moto.bucket_url}/ref-{i}.jsonl",
                    storage_options=options,
                )
            )
            moto.reset()
    best_ours = min(float(r["seconds"]) for r in ours)
    best_ref = min(float(r["seconds"]) for r in ref)
    ratio = best_ref / best_ours
    peak = max(int(r["peak_rss"]) for r in ours)
    ref_peak = max(int(r["peak_rss"]) for r in ref)
    values = {
        "bytes": size,
        "ours_seconds": [r["seconds"] for r in ours],
        "ours_cpu_seconds": [r["cpu_seconds"] for r in ours],
        "s3fs_seconds": [r["seconds"] for r in ref],
        "s3fs_cpu_seconds": [r["cpu_seconds"] for r in ref],
        "ours_peak_rss": peak,
        "ours_rss_before": ours[0]["rss_before"],
        "s3fs_peak_rss": ref_peak,
        "throughput_ratio": ratio,
    }
    return _retrieve_rows(
        "retrieve_s3",
        "s3:// (moto)",
        size,
        best_ours,
        best_ref,
        peak,
        reference="s3fs put",
        reference_rss=f"{megabytes(ref_peak)} (s3fs put)",
        limit_mb=200,
        values=values,
    )


def _info_row(name: str, figure: str, size: int, best_ours: float, best_ref: float) -> Row:
    """Throughput beside ``curl -T`` for a mode that does more than move bytes: no target."""
    return Row(
        name=name,
        figure=figure,
        ours=rate(size / best_ours),
        reference=f"{rate(size / best_ref)} (curl -T, PUT only)",
        ratio=times(best_ref / best_ours),
        target="none (info)",
        passed=True,
        values={},
    )


def upload(ctx: Context) -> list[Row]:
    """files.upload of a 100 MB input file vs ``curl -T`` to the same kind of presigned URL.

    Three modes, run in turn within each repeat (so all see the same load), each in a fresh
    process after the same warm-up upload; curl PUTs the same file to a presigned URL from the
    same emulator, whose Python receiver bounds both sides (~0.15 s for 100 MB here):

    * ``upload`` (the target): as the submit asset calls it, ``check=False`` with the sha256
      that write_request_chunks computed while writing the file: POST, PUT, preprocess.
    * ``upload_unhashed``: ``check=False`` without a checksum: one sha256 pass first (the
      checksum goes in the POST, before the PUT: it is what dedupes a retried upload).
    * ``upload_checked``: ``check=True``, the default: every line validated (and hashed in the
      same pass) before anything is sent, then the PUT.
    """
    import hashlib

    size = ctx.sizes.upload_bytes
    path = data.upload_file(size, ctx.sizes.upload_lines)
    warm = data.upload_file(100_000, 100)
    digest = hashlib.sha256()
    with path.open("rb") as handle:  # in the pipeline, done while the file is written
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    modes = {
        "upload": {"check": False, "checksum": digest.hexdigest()},
        "upload_unhashed": {"check": False},
        "upload_checked": {"check": True},
    }
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    ref: list[dict[str, float]] = []
    with EmulatorProcess() as emu:
        common = {"base_url": emu.base_url, "path": str(path), "warmup_path": str(warm)}
        for _ in range(ctx.sizes.repeats):
            for mode, kwargs in modes.items():
                runs[mode].append(run_task(task_upload, **common, **kwargs))
            file_id, url = emu.presigned_upload(path.name)
            ref.append(_curl_put(str(path), url))
            emu.api("DELETE", f"/files/{file_id}")
    best = {mode: min(float(r["seconds"]) for r in rs) for mode, rs in runs.items()}
    best_ref = min(r["seconds"] for r in ref)
    growth = {mode: max(int(r["growth"]) for r in rs) for mode, rs in runs.items()}
    values: dict[str, Any] = {
        "bytes": size,
        "curl_seconds": [r["seconds"] for r in ref],
        "curl_process_seconds": [r["process_seconds"] for r in ref],
    }
    for mode, rs in runs.items():
        values[f"{mode}_seconds"] = [r["seconds"] for r in rs]
        values[f"{mode}_cpu_seconds"] = [r["cpu_seconds"] for r in rs]
        values[f"{mode}_growth"] = growth[mode]
        values[f"{mode}_throughput_ratio"] = best_ref / best[mode]
        # Same-repeat ratios: how much of the spread is the machine, not the code.
        per_repeat = [c["seconds"] / float(r["seconds"]) for r, c in zip(rs, ref, strict=True)]
        values[f"{mode}_ratio_per_repeat"] = per_repeat
        values[f"{mode}_ratio_median"] = sorted(per_repeat)[len(per_repeat) // 2]
    label = f"upload of a {size / 1e6:.0f} MB input file"
    rows = [
        _throughput_row(
            "upload",
            f"{label}, as the submit asset calls it (check=False, checksum from the write pass)"
            ": throughput",
            size,
            best["upload"],
            best_ref,
            "curl -T, PUT only",
            values,
        ),
        _info_row(
            "upload_unhashed",
            f"{label}, check=False, no checksum (one sha256 pass first; info): throughput",
            size,
            best["upload_unhashed"],
            best_ref,
        ),
        _info_row(
            "upload_checked",
            f"{label}, check=True (every line validated first; info): throughput",
            size,
            best["upload_checked"],
            best_ref,
        ),
        _peak_rss_row(
            "upload_rss",
            f"{label}: peak RSS growth (worst of the three modes)",
            max(growth.values()),
            "-",
            limit_mb=50,
            values=values,
        ),
    ]
    for row in rows:
        row.values = values
    return rows


FIGURES = {"retrieve_local": retrieve_local, "retrieve_s3": retrieve_s3, "upload": upload}
