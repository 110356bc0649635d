"""bench/memory_cuda.py --longest finds the longest length by bracketing and bisection.

The GPU run itself needs a CUDA device (bench/gpu_check.sh); its search is plain Python and is
checked here against a known answer, so a figure it prints on real hardware is the search's, not
an artefact of it.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def memory_cuda():
    """The bench module, imported without leaving its side effects (environment, work folder,
    ``sys.path``, module names such as ``memory``) to the tests that follow."""
    environ, path, modules = dict(os.environ), list(sys.path), set(sys.modules)
    sys.path.insert(0, str(BENCH))
    try:
        import memory_cuda

        yield memory_cuda
    finally:
        shutil.rmtree(sys.modules["_common"].WORK, ignore_errors=True)
        os.environ.clear()
        os.environ.update(environ)
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            if name in ("_common", "memory", "memory_cuda"):
                del sys.modules[name]


@pytest.mark.parametrize("limit", [300, 1024, 5000, 21_848, 78_475, 342_733])
@pytest.mark.parametrize("guess", [None, 1024, 20_000, 400_000])
def test_search_finds_the_longest_multiple_of_256_that_fits(memory_cuda, limit, guess):
    tried = []

    def fits(seq):
        tried.append(seq)
        return seq <= limit

    search = memory_cuda.Search("ours", 12)
    memory_cuda.search_longest(fits, guess, search, lambda seq: "")
    assert search.longest == limit // 256 * 256
    assert search.failed == search.longest + 256
    assert not search.stopped
    assert all(seq % 256 == 0 for seq in tried)
    assert len(tried) == len(set(tried)), "no length is tried twice"
    assert len(tried) <= 30


def test_search_stops_when_a_try_may_not_start_and_keeps_its_bracket(memory_cuda):
    def fits(seq):
        return seq <= 50_000

    def can_try(seq):
        return "time budget" if seq > 45_000 else ""

    search = memory_cuda.Search("ours", 24)
    memory_cuda.search_longest(fits, 40_000, search, can_try)
    assert search.stopped.startswith("time budget before ")
    assert 0 < search.longest <= 45_000 and search.failed is None
    assert "stopped (time budget" in search.status()


def test_nothing_fits(memory_cuda):
    search = memory_cuda.Search("standard", 8)
    memory_cuda.search_longest(lambda seq: False, None, search, lambda seq: "")
    assert search.longest == 0 and search.failed == 256
    assert search.status() == "256 tokens do not fit"
