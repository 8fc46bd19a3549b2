"""The Python micro-benchmark run by pyperf inside every tier (copied into the bench image)."""

import json

import pyperf


def workload() -> None:
    """A mix of what Python programs do: dict and string work, arithmetic, JSON round trips."""
    table = {f"key{i}": i * 1.5 for i in range(200)}
    total = 0.0
    for key, value in table.items():
        total += value * len(key)
    json.loads(json.dumps(table))
    "".join(sorted(table))


if __name__ == "__main__":
    runner = pyperf.Runner()
    runner.metadata["description"] = "dict/str/float/json mix"
    runner.bench_func("pymix", workload)
