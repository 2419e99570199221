"""Suite-wide settings."""

from collections.abc import Iterator

import pytest
import torch
from hypothesis import settings

# The same examples on every run: CI never fails on a draw a previous run did not see. A
# failing draw prints its builder and seed, which reproduce it exactly.
settings.register_profile("minsharp", derandomize=True, print_blob=True)
settings.load_profile("minsharp")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread for every test, whatever an earlier test (or the CLI) set.

    Tiny tensors gain nothing from threads, and on a busy 2-core machine their spin-waiting
    made the suite up to 40× slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
