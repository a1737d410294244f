"""Join a batch's outputs back onto its inputs: streaming JSONL -> Arrow -> Parquet.

:func:`join_results` writes one Parquet row per input ``custom_id``, in input order, whatever
order, gaps, duplicates or junk the output and error files hold, and returns a
:class:`JoinSummary` (counts per status, unknown and duplicate ids, malformed lines, tokens by
model, a preview).

How it stays fast and small (memory: the inputs' ids plus a few blocks of output, never the
whole output; peak RSS does not grow with the batch beyond those ids):

1. Outputs and errors start to be read at once by a background thread, in 2 MiB blocks of
   whole lines, and two blocks are parsed at once, each on its own thread. Each block is parsed
   by pyarrow's JSON reader with an explicit schema of the fields we extract (unknown fields are
   ignored); the raw lines of the rows that did not succeed are kept for the ``response``
   column (every line's with ``raw_responses="all"``). A block pyarrow cannot read
   (junk, a truncated line, a field of an unexpected type) is split in halves until the bad
   lines are isolated; those few lines are read with :mod:`json`, and lines that are not a JSON
   object with a ``custom_id`` are recorded in ``malformed_lines`` (and logged).
2. Meanwhile the inputs are read the same way; their columns go to a local Arrow IPC spill file
   in input order and only their ids stay in memory, sorted, for lookups
   (``pyarrow.compute.search_sorted``).
3. Each result row is looked up among the input ids and spilled, by input position, into
   buckets (consecutive ranges of inputs, about 4 MiB of output each, 256 at most): one local
   file, one ``writev`` of Arrow buffers per bucket that a spill (about 6 MiB of extracted rows)
   touches.
4. Buckets are assembled one at a time, in input order (one ``preadv`` per segment straight into
   new Arrow buffers): the first occurrence of each id wins, inputs without a result get
   ``missing`` / ``expired`` / ``cancelled``, and the rows go to the Parquet file (row groups of
   about 4 MiB) from a writer thread. The file is written under a temporary name and published
   at the end (``os.replace`` locally, one upload for object stores): nothing appears at the
   destination unless the whole join succeeded.

The spill needs about the size of the outputs plus the inputs on the local temporary directory
(``TMPDIR``); it is removed whatever happens.

One module per step:

- ``blocks``: files read as blocks of whole lines, parsed on worker threads (step 1, and the
  inputs' reading in step 2), and the hand-back of freed memory to the OS;
- ``inputs``: the inputs' sorted ids and their columns in input order (step 2);
- ``outputs``: output and error lines made into result rows, and the report of lines that are
  not results (step 1);
- ``buckets``: the result rows spilled by input position and read back (steps 3 and 4);
- ``assemble``: the rows of each bucket matched to the inputs and written to Parquet (step 4);
- ``structured``: with an ``output_schema``, a bucket's answers read by pyarrow as one JSONL
  block and checked with Arrow compute (the rows it cannot vouch for go to the schema's own
  parser);
- ``arrow``: small Arrow helpers the steps share;
- ``join``: :func:`join_results`, which runs the steps, and the :class:`JoinSummary`.

The sizes above are constants of the module that uses them (``blocks._READ_SIZE`` and
``_PARSE_WORKERS``, ``buckets._BUCKET_BYTES``, ``assemble._ROW_GROUP_BYTES``,
``join._SPILL_BYTES``...). The few that several modules use are read as ``blocks._TRIM_EVERY``,
``blocks._SLOW_LINES`` and ``outputs._MAX_RECORDED``, so that a value patched in its module
reaches every use. Every module logs to the ``dagster_together.results`` logger.

With ``output_schema=`` each succeeded answer is also parsed and checked against a JSON Schema
(:mod:`dagster_together.output_schema`) during step 4, one bucket at a time, and its fields are
written as typed columns; answers that are not JSON or do not match get ``invalid_output``.
Most answers are read in bulk by pyarrow (``structured``); the verdict, values and error are
those of :meth:`OutputSchema.parse`, which reads every answer the bulk path does not accept.

This package imports neither Dagster nor httpx; pyarrow is imported inside the functions.
"""

from __future__ import annotations

from dagster_together.results.assemble import STATUSES
from dagster_together.results.inputs import REQUEST_COLUMNS
from dagster_together.results.join import JoinSummary, join_results
from dagster_together.results.outputs import RESULT_COLUMNS, MalformedResultError

__all__ = [
    "REQUEST_COLUMNS",
    "RESULT_COLUMNS",
    "STATUSES",
    "JoinSummary",
    "MalformedResultError",
    "join_results",
]
