"""Per-call overhead of the Python layer: time spent in Python and the binding around one
core call. Run with the installed wheel (make bench does).

The fast path (a policy error raised by the core before any Docker call) times argument
conversion, the runtime hand-off, the GIL release and the exception mapping, with almost no
core work inside; a full run("true") is shown for scale.
"""

import os
import statistics
import time

from agent_sandbox import PolicyError, Sandbox

IMAGE = os.environ.get("AGENT_SANDBOX_IMAGE", "agent-sandbox/base:bookworm")


def fast_path(n=20000):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        try:
            Sandbox(image=IMAGE, allow=["*.com"], env={"A": "b"}, timeout=5).run("true")
        except PolicyError:
            pass
        times.append(time.perf_counter() - t)
    return times


def construct_only(n=20000):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        Sandbox(image=IMAGE, allow=["github.com"], env={"A": "b"}, timeout=5, memory="512m")
        times.append(time.perf_counter() - t)
    return times


def full_runs(n=10):
    s = Sandbox(image=IMAGE)
    s.run("true")
    times = []
    for _ in range(n):
        t = time.perf_counter()
        s.run("true")
        times.append(time.perf_counter() - t)
    return times


def row(name, times):
    times = sorted(times)
    p50 = statistics.median(times) * 1e6
    p99 = times[int(len(times) * 0.99) - 1] * 1e6
    print(f"| {name} | {len(times)} | {p50:.1f} | {p99:.1f} |")


print("| call | n | p50 µs | p99 µs |")
print("|---|---|---|---|")
row("Sandbox(...) construction (6 kwargs)", construct_only())
row("Sandbox(...).run() raising PolicyError (binding round trip)", fast_path())
row("Sandbox(...).run('true') (full sandbox, for scale)", full_runs())
