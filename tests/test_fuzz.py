"""Fuzzing the input loaders: every file a user can hand simserve (scenario, sweep spec,
evaluation, catalog, trace CSV in each layout, Mooncake JSON-lines trace, benchmark result
JSON, and a calibration profile) is mutated from the shipped examples or made of random bytes,
and each case must give either a valid object or a one-line `InputError`, never another
exception, and in bounded time. A catalog that loads is also used for a run of a few requests
(numbers a loader accepts must not break the model, nor the summary's JSON).

`make test` runs a fast profile (a few seconds). The long profile is run by hand:

    SIMSERVE_FUZZ_EXAMPLES=3000 .venv/bin/python -m pytest tests/test_fuzz.py -q \
        --hypothesis-show-statistics

(`SIMSERVE_FUZZ_EXAMPLES` sets the cases per loader and strategy; hypothesis keeps what it
finds in `.hypothesis/` and replays it first on the next run.)
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simserve.antipatterns.checklist import lint_file
from simserve.calibration.compare import load_real
from simserve.catalog import load_catalog
from simserve.config import load_scenario
from simserve.costmodel.calibrated import load_profile
from simserve.errors import InputError
from simserve.experiments.run import run_scenario
from simserve.experiments.sweep import load_sweep_spec
from simserve.workload import load_trace

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("SIMSERVE_FUZZ_EXAMPLES", "12"))
# NOTE: a loader refuses or accepts a file of a few KB in milliseconds; seconds mean it expands
# or loops (the alias bomb took minutes). Generous, so a busy CI machine does not flake.
CASE_BOUND_S = 10.0
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 50,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])


def _head(path: Path, lines: int = 40) -> str:
    with path.open(encoding="utf-8") as fh:
        return "".join(line for _i, line in zip(range(lines), fh, strict=False))


def _vllm_result() -> str:
    return json.dumps({
        "backend": "vllm", "model_id": "meta-llama/Meta-Llama-3-8B", "request_rate": 4.0,
        "completed": 3, "duration": 10.0, "request_throughput": 0.3, "mean_ttft_ms": 100.0,
        "median_ttft_ms": 90.0, "p99_ttft_ms": 200.0, "mean_tpot_ms": 20.0,
        "mean_e2el_ms": 500.0, "input_lens": [10, 20, 30], "output_lens": [3, 2, 0],
        "ttfts": [0.1, 0.2, 0.0], "itls": [[0.02, 0.04], [0.03], []],
        "errors": ["", "", "timeout"],
    })


def _sglang_result() -> str:
    return json.dumps({"backend": "sglang", "request_rate": 2.0, "completed": 3,
                       "duration": 10.0, "total_output_tokens_retokenized": 9,
                       "mean_e2e_latency_ms": 500.0, "mean_ttft_ms": 100.0}) + "\n"


def _shipped(path: Path) -> str:
    """A shipped file's text with its class references (`file.py:Class`, relative to the
    file) made absolute: the fuzz cases are written to another folder."""
    return re.sub(r"([\w./-]+\.py):", lambda m: f"{(path.parent / m.group(1)).resolve()}:",
                  path.read_text())


# Synthetic rows in the layouts of BurstGPT (with its session columns) and of the Azure 2024
# trace (timestamps with a UTC offset): no such file ships.
BURSTGPT = (
    "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,"
    "Log Type\n"
    "100.0,aaa,3,GPT-4,200,40,240,Conversation log\n"
    "101.5,bbb,2,ChatGPT,50,10,60,Conversation log\n"
    "103.0,,1,ChatGPT,70,0,70,API log\n"
    "104.0,aaa,1,ChatGPT,80,8,88,Conversation log\n"
)
AZURE_2024 = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    "2024-05-10 00:00:00.0042760+00:00,2162,5\n"
    "2024-05-10 00:00:00.0153750+00:00,2399,8\n"
    "2024-05-10 00:00:01.12+00:00,4,121\n"
)


def _load_catalog_and_run(path: Path) -> object:
    """Load a catalog file, then run a few requests on its first GPU and model (a cheap
    roofline run, with costs) to use the numbers it accepted."""
    catalog = load_catalog(path)
    gpu, model = next(iter(catalog.gpus)), next(iter(catalog.models))
    scenario = path.with_name("run.yaml")
    scenario.write_text(
        f"name: fuzz\nhardware: {gpu}\nmodel: {model}\ncatalog: {path.name}\n"
        "cost_model: {kind: roofline}\ncost: {}\nmetrics: {warmup_s: 0, cooldown_s: 0}\n"
        "workload:\n  num_requests: 4\n  arrival: {process: poisson, rate: 5}\n"
        "  lengths: {dist: fixed, prompt_len: 64, output_len: 4}\n")
    output = run_scenario(load_scenario(scenario))
    json.dumps(output.summary, allow_nan=False)  # summary.json must stay JSON
    return catalog


SEEDS: dict[str, list[str]] = {
    "scenario": [_shipped(p) for p in sorted((ROOT / "scenarios").glob("*.yaml"))]
    + [_shipped(p) for p in sorted((ROOT / "scenarios").glob("*/*.yaml"))
       if "sweeps" not in p.parts and "evaluations" not in p.parts],
    "sweep": [_shipped(p).replace("base: ../", f"base: {ROOT}/scenarios/")
              for p in sorted((ROOT / "scenarios" / "sweeps").glob("*.yaml"))],
    "evaluation": [p.read_text() for p in sorted((ROOT / "scenarios" / "evaluations")
                                                   .glob("*.yaml"))],
    "catalog": [(ROOT / "simserve" / "data" / name).read_text()
                for name in ("gpus.yaml", "models.yaml")],
    "trace": [_head(p) for p in sorted((ROOT / "calibration" / "data" / "traces").glob("*.csv"))]
    + [_head(ROOT / "calibration" / "data" / "distserve" / "ground_truth_opt13b_sharegpt"
             / "vllm-100-1.csv"), BURSTGPT, AZURE_2024],
    "mooncake": [_head(p, 12) for p in sorted((ROOT / "calibration" / "data" / "traces"
                                               / "mooncake").glob("*.jsonl"))],
    "result": [_vllm_result(), _sglang_result(), _vllm_result() + "\n" + _vllm_result()],
    "profile": [p.read_text() for p in sorted((ROOT / "calibration" / "profiles")
                                             .glob("*_tp1_*.yaml"))],
}
SUFFIX = {"trace": ".csv", "mooncake": ".jsonl", "result": ".json"}
LOADERS: dict[str, Callable[[Path], object]] = {
    "scenario": load_scenario,
    "sweep": load_sweep_spec,
    "evaluation": lint_file,
    "catalog": _load_catalog_and_run,
    "trace": load_trace,
    "mooncake": load_trace,
    "result": load_real,
    "profile": load_profile,
}

# Values that break loaders: extremes, wrong types, YAML specials, aliases, odd text.
NASTY = ["", "0", "-1", "1e308", "1e400", "-1e400", ".inf", "-.inf", ".nan", "nan", "null",
         "~", "[]", "{}", "[[[]]]", "true", "no", "'x'", '"\\u0000"', "9" * 40, "-" + "9" * 40,
         "0x1F", "1_000", "1:30", "2023-11-16 18:15:46+01:00", "&a [1, 2]", "*a", "<<: {}",
         "!!python/object:os.system ''", "é✓", "\t", "..", "../../x", "1.5", "1e3", ",", '"',
         "\x00", "\\", "NaN", "Infinity", "-0"]


def _mutate(text: str, data: st.DataObject) -> str:
    """A few random edits of `text`: replace a token, drop or repeat a line, splice bytes."""
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        lines = text.splitlines(keepends=True) or [""]
        i = data.draw(st.integers(0, len(lines) - 1), label="line")
        op = data.draw(st.sampled_from(["value", "drop", "repeat", "swap", "insert", "chars",
                                        "truncate"]), label="op")
        if op == "value":
            line = lines[i]
            cut = max(line.find(":"), line.find(",")) + 1
            nasty = data.draw(st.sampled_from(NASTY) | st.text(max_size=12), label="value")
            lines[i] = line[:cut] + " " + nasty + "\n" if cut else nasty + "\n"
        elif op == "drop":
            del lines[i]
        elif op == "repeat":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = data.draw(st.integers(0, len(lines) - 1), label="other")
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "insert":
            lines.insert(i, data.draw(st.sampled_from(NASTY) | st.text(max_size=30),
                                      label="new line") + "\n")
        elif op == "chars":
            line = lines[i]
            at = data.draw(st.integers(0, len(line)), label="at")
            lines[i] = line[:at] + data.draw(st.text(max_size=8), label="chars") + line[at:]
        else:
            lines = lines[: i + 1]
        text = "".join(lines)
    return text


VALUES = (st.integers(-(10**30), 10**30) | st.sampled_from([0, -1, 1, 2**63, 10**400])
          | st.floats() | st.text(max_size=12) | st.booleans() | st.none()
          | st.lists(st.integers(-5, 10**6), max_size=4)
          | st.dictionaries(st.text(max_size=6), st.integers(-3, 3), max_size=2))


def _leaves(node: object, path: tuple = ()) -> list[tuple]:
    """Paths to every value in a parsed document (mappings and lists walked)."""
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _leaves(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _leaves(value, (*path, i))
    return found


def _mutate_values(document: object, data: st.DataObject) -> object:
    """The document with a few values replaced, removed, or unknown keys added."""
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        paths = _leaves(document)
        path = data.draw(st.sampled_from(paths), label="path")
        value = data.draw(VALUES, label="value")
        if not path:
            document = value
            continue
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        op = data.draw(st.sampled_from(["replace", "delete", "add"]), label="op")
        if op == "replace" or not isinstance(parent, dict):
            parent[path[-1]] = value
        elif op == "delete":
            del parent[path[-1]]
        else:
            parent[data.draw(st.text(max_size=8), label="key")] = value
    return document


def _load(kind: str, folder: Path, content: str | bytes) -> None:
    """Run one loader on one file: a valid object or a one-line InputError, in bounded time."""
    path = folder / f"case{SUFFIX.get(kind, '.yaml')}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # InputWarning: accepted input worth a note
            result = LOADERS[kind](path)
        assert result is not None
    except InputError as exc:
        message = exc.one_line()
        assert message and "\n" not in message, message
    elapsed = time.perf_counter() - t0
    assert elapsed < CASE_BOUND_S, f"{kind} took {elapsed:.1f} s"


@pytest.mark.parametrize("kind", sorted(LOADERS))
@FUZZ
@given(data=st.data())
def test_mutated_shipped_files_load_or_fail_in_one_line(kind, tmp_path_factory, data):
    seed = data.draw(st.sampled_from(SEEDS[kind]), label="seed")
    _load(kind, tmp_path_factory.mktemp(kind), _mutate(seed, data))


@pytest.mark.parametrize("kind", sorted(LOADERS))
@FUZZ
@given(data=st.data())
def test_valid_files_with_hostile_values_load_or_fail_in_one_line(kind, tmp_path_factory, data):
    seed = data.draw(st.sampled_from(SEEDS[kind]), label="seed")
    if kind == "trace":
        rows = [line.split(",") for line in seed.splitlines()]
        row = data.draw(st.integers(1, len(rows) - 1), label="row")
        column = data.draw(st.integers(0, len(rows[row]) - 1), label="column")
        rows[row][column] = str(data.draw(VALUES, label="value"))
        _load(kind, tmp_path_factory.mktemp(kind), "\n".join(",".join(r) for r in rows))
        return
    if kind == "mooncake":
        lines = seed.splitlines()
        row = data.draw(st.integers(0, len(lines) - 1), label="row")
        lines[row] = json.dumps(_mutate_values(json.loads(lines[row]), data))
        _load(kind, tmp_path_factory.mktemp(kind), "\n".join(lines) + "\n")
        return
    if kind == "result":
        documents = [json.loads(line) for line in seed.splitlines() if line.strip()]
        mutated = _mutate_values(documents[0], data)
        _load(kind, tmp_path_factory.mktemp(kind), json.dumps(mutated))
        return
    document = _mutate_values(yaml.safe_load(seed), data)
    _load(kind, tmp_path_factory.mktemp(kind), yaml.safe_dump(document, allow_unicode=True))


@pytest.mark.parametrize("kind", sorted(LOADERS))
@FUZZ
@given(content=st.binary(max_size=2048))
def test_random_bytes_load_or_fail_in_one_line(kind, tmp_path_factory, content):
    _load(kind, tmp_path_factory.mktemp(kind), content)


@pytest.mark.parametrize("kind", sorted(LOADERS))
@FUZZ
@given(content=st.text(alphabet=st.characters(codec="utf-8"), max_size=400))
def test_random_text_loads_or_fails_in_one_line(kind, tmp_path_factory, content):
    _load(kind, tmp_path_factory.mktemp(kind), content)


def test_every_seed_is_a_valid_file(tmp_path):
    # The mutations start from files that load, so what they find is the mutation's doing.
    for kind, seeds in SEEDS.items():
        assert seeds, kind
        for i, seed in enumerate(seeds):
            folder = tmp_path / f"{kind}{i}"
            folder.mkdir()
            path = folder / f"case{SUFFIX.get(kind, '.yaml')}"
            path.write_text(seed)
            if kind == "result" and i == 2:
                with pytest.raises(InputError, match="holds 2 results"):
                    load_real(path)
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the BurstGPT seed's skipped failed request
                assert LOADERS[kind](path) is not None, (kind, i)
