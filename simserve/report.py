"""The console block: vLLM's "Serving Benchmark Result" layout plus simserve's extras."""

from __future__ import annotations

from collections.abc import Mapping

from simserve.formatting import fmt_fixed

__all__ = ["format_summary"]

_WIDTH = 50


def _rule(title: str = "", fill: str = "-") -> str:
    return f"{title:{fill}^{_WIDTH}}"


def _line(label: str, value: object, digits: int = 2) -> str:
    # NOTE: vLLM's fixed decimals (`formatting.fmt_fixed`), not the reports' significant
    # digits: users diff this block against `vllm bench serve` output.
    text = value if isinstance(value, str) else fmt_fixed(value, digits)
    return f"{label:<40} {text:<10}"


def _pct_keys(summary: Mapping[str, object], metric: str) -> list[tuple[str, str]]:
    out = []
    for key in summary:
        if key.startswith("p") and key.endswith(f"_{metric}_ms"):
            pct = key[1 : -len(f"_{metric}_ms")]
            if pct.replace(".", "", 1).isdigit():
                out.append((pct, key))
    return out


def format_summary(summary: Mapping[str, object]) -> str:
    """Render a summary dict as the console block users of `vllm bench serve` recognise."""
    s = summary
    lines = [_rule(" Serving Benchmark Result ", "=")]
    lines += [
        _line("Successful requests:", s.get("completed")),
        _line("Benchmark duration (s):", s.get("duration")),
        _line("Total input tokens:", s.get("total_input_tokens")),
        _line("Total generated tokens:", s.get("total_output_tokens")),
        _line("Request throughput (req/s):", s.get("request_throughput")),
    ]
    if s.get("request_goodput") is not None:
        lines.append(_line("Request goodput (req/s):", s.get("request_goodput")))
    lines += [
        _line("Output token throughput (tok/s):", s.get("output_throughput")),
        _line("Total Token throughput (tok/s):", s.get("total_token_throughput")),
    ]
    sections = [
        ("ttft", "TTFT", "Time to First Token"),
        ("tpot", "TPOT", "Time per Output Token (excl. 1st token)"),
        ("itl", "ITL", "Inter-token Latency"),
        ("e2el", "E2EL", "End-to-end Latency"),
        ("tbt", "TBT", "Time Between Tokens (per token)"),
        ("scheduling_delay", "Scheduling delay", "Scheduling Delay"),
        ("normalized_latency", "Normalized latency", "Normalized Latency (e2el / n)"),
    ]
    for metric, short, title in sections:
        if f"mean_{metric}_ms" not in s:
            continue
        lines.append(_rule(title))
        lines.append(_line(f"Mean {short} (ms):", s.get(f"mean_{metric}_ms")))
        lines.append(_line(f"Median {short} (ms):", s.get(f"median_{metric}_ms")))
        for pct, key in _pct_keys(s, metric):
            lines.append(_line(f"P{pct} {short} (ms):", s.get(key)))
    if "mean_kv_transfer_ms" in s:
        # Disaggregated serving: where the time between the first and second token went.
        lines.append(_rule("KV handoff (prefill -> decode)"))
        lines.append(_line("Mean KV transfer (ms):", s.get("mean_kv_transfer_ms")))
        lines.append(_line("Mean wait for slot or link (ms):", s.get("mean_kv_transfer_wait_ms")))
        lines.append(_line("Requests that waited:", s.get("num_kv_transfer_waited"), 0))
    lines.append(_rule("simserve extras"))
    extras = [
        ("Mean fluidity-index:", "mean_fluidity_index", 4),
        ("P1 fluidity-index:", "p1_fluidity_index", 4),
        ("Fluid token rate (tok/s):", "fluid_token_rate", 2),
        ("SLO attainment:", "slo_attainment", 4),
        ("Prefix cache hit rate (prompt tokens):", "prefix_cache_hit_rate", 4),
        ("Stalls (gaps over threshold):", "num_stalls", 0),
        ("Preemptions:", "num_preemptions", 0),
        ("Rejected requests:", "num_rejected", 0),
        ("Excluded by warm-up / cool-down:", None, 0),
        ("Max concurrent requests:", "max_concurrent_requests", 0),
        ("GPUs:", "num_gpus", 0),
    ]
    for label, key, digits in extras:
        if key is None:
            value = f"{s.get('num_excluded_warmup', 0)} / {s.get('num_excluded_cooldown', 0)}"
            lines.append(_line(label, value))
        elif key in s:
            lines.append(_line(label, s.get(key), digits))
    classes = s.get("classes")
    if isinstance(classes, Mapping) and classes:
        lines += _class_lines(classes)
    for warning in s.get("warnings") or []:
        lines.append(f"warning: {warning}")
    lines.append("=" * _WIDTH)
    return "\n".join(lines)


def _class_lines(classes: Mapping[str, Mapping[str, object]]) -> list[str]:
    """Each request class's own block: its latency and its attainment of its own SLO."""
    lines = [_rule("Request classes")]
    for name, c in classes.items():
        lines.append(f"{name} (priority {c.get('priority')}): {c.get('completed')} completed, "
                     f"{c.get('num_rejected')} rejected")
        for label, key, digits in (
            ("  Mean TTFT (ms):", "mean_ttft_ms", 2),
            ("  P99 TTFT (ms):", "p99_ttft_ms", 2),
            ("  Mean TPOT (ms):", "mean_tpot_ms", 2),
            ("  P99 TPOT (ms):", "p99_tpot_ms", 2),
            ("  SLO attainment (own SLO):", "slo_attainment", 4),
        ):
            if key in c:
                lines.append(_line(label, c.get(key), digits))
    return lines
