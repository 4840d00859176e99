"""A CPU-bound task: threads share one core (the GIL), worker processes use them all."""

from __future__ import annotations

from pynenc_lite import Pynenc

app = Pynenc("cpu_bound_sample")


def count_primes(limit: int) -> int:
    """Count primes below `limit` the slow way: pure Python, all CPU."""
    count = 0
    for n in range(2, limit):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            count += 1
    return count


@app.task
def primes_below(limit: int) -> int:
    return count_primes(limit)
