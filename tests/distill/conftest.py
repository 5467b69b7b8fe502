import pytest

from ddkernels.distill import data


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 8×8 digits (fixed split), loaded once per test module."""
    return data.load_dataset("digits")
