"""Golden outputs: the shipped scenarios (and engine corners reached from them) give exactly the
summary.json, requests.csv and steps.csv they gave when the golden files were written.

Speed work rewrites the engine's bookkeeping and the metrics passes; these files pin what must
not move. A deliberate change of outputs (a new cost model, a fixed engine bug) regenerates
them: `SIMSERVE_UPDATE_GOLDEN=1 pytest tests/test_golden.py`, and the diff of
`tests/golden/` is then reviewed like code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from simserve.config import load_scenario
from simserve.experiments.run import run_scenario, write_run_dir

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("SIMSERVE_UPDATE_GOLDEN") == "1"

# Short runs measure every request (no warm-up/cool-down windows), so no metric is empty.
WHOLE = ["metrics.warmup_s=0", "metrics.cooldown_s=0"]
SMALL = ["workload.num_requests=400", *WHOLE]
# (case, scenario file, overrides): every policy, speculation, PP, disaggregation, several
# replicas under each router, closed-loop and offline arrivals, preemption under a small KV
# cache, and a token budget too small for all decodes. These ran before prefix caching existed
# and run with it off: their outputs must not have moved.
UNCACHED: list[tuple[str, str, list[str]]] = [
    ("default", "scenarios/default.yaml", []),
    ("bench-2k", "scenarios/bench.yaml", ["workload.num_requests=2000"]),
    ("bench-light", "scenarios/bench.yaml",
     ["workload.num_requests=600", "workload.arrival.rate=4", *WHOLE]),
    ("prefill-first", "scenarios/default.yaml", [*SMALL, "engine.policy=prefill_first"]),
    ("mixed", "scenarios/default.yaml", [*SMALL, "engine.policy=mixed"]),
    ("static", "scenarios/default.yaml", [*SMALL, "engine.policy=static"]),
    ("arxiv", "scenarios/antipatterns/llama3-8b-h100-arxiv.yaml", SMALL),
    ("conv", "scenarios/antipatterns/llama3-8b-h100-conv.yaml", SMALL),
    ("specdec-8b", "scenarios/casestudy/specdec-llama3-8b-h100.yaml",
     ["workload.num_requests=300", *WHOLE]),
    ("specdec-70b", "scenarios/casestudy/specdec-llama3-70b-4xh100.yaml",
     ["workload.num_requests=300", *WHOLE]),
    ("specdec-dynamic", "scenarios/casestudy/specdec-llama3-8b-h100.yaml",
     ["workload.num_requests=300", *WHOLE, "workload.arrival.rate=16",
      "engine.speculative.disable_above_batch=24"]),
    ("specdec-prefill-first", "scenarios/casestudy/specdec-llama3-8b-h100.yaml",
     ["workload.num_requests=200", *WHOLE, "engine.policy=prefill_first",
      "engine.num_gpu_blocks_override=900"]),
    ("vllm-replay", "scenarios/validation/opt13b-a100-vllm.yaml", []),
    ("distserve-replay", "scenarios/validation/opt13b-a100-distserve.yaml", []),
    ("replicas-least-kv", "scenarios/default.yaml",
     [*SMALL, "cluster.replicas=3", "cluster.router=least_kv", "workload.arrival.rate=20"]),
    ("replicas-least-outstanding", "scenarios/default.yaml",
     [*SMALL, "cluster.replicas=2", "cluster.router=least_outstanding"]),
    ("pp2", "scenarios/default.yaml", [*SMALL, "pp=2", "workload.arrival.rate=12"]),
    ("closed-loop", "scenarios/default.yaml",
     [*SMALL, "workload.arrival.process=closed_loop", "workload.arrival.concurrency=24",
      "workload.arrival.rate=null"]),
    ("closed-loop-replicas", "scenarios/default.yaml",
     [*SMALL, "workload.arrival.process=closed_loop", "workload.arrival.concurrency=32",
      "workload.arrival.rate=null", "cluster.replicas=2", "cluster.router=least_kv"]),
    ("offline", "scenarios/default.yaml",
     ["workload.num_requests=300", *WHOLE, "workload.arrival.process=offline",
      "workload.arrival.rate=null"]),
    ("preempting", "scenarios/default.yaml",
     [*SMALL, "engine.num_gpu_blocks_override=600", "workload.arrival.rate=14"]),
    ("preempting-prefill-first", "scenarios/default.yaml",
     [*SMALL, "engine.num_gpu_blocks_override=600", "workload.arrival.rate=14",
      "engine.policy=prefill_first"]),
    ("small-budget", "scenarios/default.yaml",
     [*SMALL, "engine.max_num_batched_tokens=32", "workload.arrival.rate=20",
      "workload.lengths.dist=fixed", "workload.lengths.prompt_len=16",
      "workload.lengths.output_len=300"]),
    ("disaggregated-pp", "scenarios/validation/opt13b-a100-distserve.yaml",
     ["cluster.decode.pp=2", "cluster.decode.instances=1"]),
]
NO_CACHE = "engine.enable_prefix_caching=false"
# With prefix caching (on by default for chunked prefill): as shipped, after preemptions
# (recomputes find their own blocks), on a disaggregated prefill pool.
CACHED: list[tuple[str, str, list[str]]] = [
    ("default-cached", "scenarios/default.yaml", []),
    ("preempting-cached", "scenarios/default.yaml",
     [*SMALL, "engine.num_gpu_blocks_override=600", "workload.arrival.rate=14"]),
    ("preempting-prefill-first-cached", "scenarios/default.yaml",
     [*SMALL, "engine.num_gpu_blocks_override=600", "workload.arrival.rate=14",
      "engine.policy=prefill_first", "engine.enable_prefix_caching=true"]),
    ("disaggregated-cached", "scenarios/validation/opt13b-a100-distserve.yaml",
     ["engine.enable_prefix_caching=true", "cluster.prefill.num_gpu_blocks_override=300"]),
    # Shared system prompts and multi-turn sessions (turns released by the engine), under a KV
    # cache small enough to evict cached prefixes; and a Mooncake trace's own block ids.
    ("sessions-prefix-cached", "scenarios/default.yaml",
     [*SMALL, "workload.prefix={num_groups: 3, shared_len: 128}",
      "workload.sessions={turns: 3, think_time_s: 2}", "workload.arrival.rate=1",
      "engine.num_gpu_blocks_override=2500"]),
    ("mooncake-cached", "scenarios/traces/mooncake-conversation.yaml",
     ["workload.num_requests=200", *WHOLE]),
    # Replica groups on unlike GPUs (H100 and A100) behind one router, with costs.
    ("groups-h100-a100", "scenarios/clusters/h100-a100-groups.yaml", SMALL),
]
CASES = [(case, scenario, [*overrides, NO_CACHE]) for case, scenario, overrides in UNCACHED]
CASES += CACHED


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _outputs(case: str, scenario: str, overrides: list[str], tmp_path: Path) -> dict[str, str]:
    output = run_scenario(load_scenario(ROOT / scenario, overrides))
    run_dir = write_run_dir(output, tmp_path / case)
    return {
        "summary.json": (run_dir / "summary.json").read_text(),
        "requests.csv": _digest(run_dir / "requests.csv"),
        "steps.csv": _digest(run_dir / "steps.csv"),
    }


@pytest.mark.parametrize(("case", "scenario", "overrides"), CASES, ids=[c[0] for c in CASES])
def test_outputs_match_golden(case, scenario, overrides, tmp_path):
    got = _outputs(case, scenario, overrides, tmp_path)
    summary_file = GOLDEN / f"{case}.summary.json"
    digest_file = GOLDEN / f"{case}.digests.json"
    digests = {k: v for k, v in got.items() if k != "summary.json"}
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        summary_file.write_text(got["summary.json"])
        digest_file.write_text(json.dumps(digests, indent=2) + "\n")
    assert got["summary.json"] == summary_file.read_text()
    assert digests == json.loads(digest_file.read_text())
