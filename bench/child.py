"""``python -m bench.child MODULE:FUNCTION JSON_KWARGS RESULT_PATH``: run one task, write its dict.

Started by :func:`bench.measure.run_task`; imports only the task's module, so the process's
memory is the task's own.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    """Run the task named in ``argv`` and write its result (plus ``peak_rss``) as JSON."""
    name, raw_kwargs, result_path = argv
    module_name, _, function_name = name.partition(":")
    function = getattr(importlib.import_module(module_name), function_name)
    result = function(**json.loads(raw_kwargs))
    from bench.measure import peak_rss

    result.setdefault("peak_rss", peak_rss())
    with open(result_path, "w") as handle:
        json.dump(result, handle, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
