"""docs/schedulers.md's code runs: its queue order loads through the registry and sorts as the
page says, and its test-by-hand example passes against the shipped policy."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from simserve.engine import RequestTable
from simserve.engine.registry import policy_class, queue_class

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "schedulers.md").read_text(), re.S)


def _block(marker: str) -> str:
    (block,) = [b for b in BLOCKS if marker in b]
    return block


def test_the_queue_order_example_loads_and_sorts_by_total_tokens(tmp_path):
    (tmp_path / "my_orders.py").write_text(_block("class ShortestJobFirst"))
    cls = queue_class(f"{tmp_path}/my_orders.py:ShortestJobFirst")
    table = RequestTable(np.array([100, 10, 50]), np.array([5, 200, 10]), np.zeros(3))
    queue = cls(table)
    for rid in range(3):
        queue.push(rid)
    assert cls.name == "shortest_job_first" and list(queue) == [2, 0, 1]


def test_the_test_by_hand_example_passes():
    policy = policy_class(f"{ROOT}/scenarios/policies/shortest_prompt_first.py:"
                          "ShortestPromptFirst")
    exec(_block("RequestTable("), {"ShortestPromptFirst": policy})
