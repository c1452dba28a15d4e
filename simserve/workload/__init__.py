"""Workloads: when requests arrive and how long their prompts and outputs are (DESIGN §2).

`build_workload` turns a `WorkloadConfig` and two generators (arrivals, lengths) into a
`Workload` of parallel arrays before the run; `load_trace` reads the real traces it can replay.
"""

from simserve.workload.build import Workload, build_workload
from simserve.workload.traces import TRACE_FORMATS, Trace, load_trace

__all__ = ["TRACE_FORMATS", "Trace", "Workload", "build_workload", "load_trace"]
