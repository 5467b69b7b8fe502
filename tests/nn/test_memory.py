"""AddressableMemory's row arguments: clear errors naming ``rows`` instead of a raw IndexError."""
import pytest
import torch

from ddkernels.nn.memory import AddressableMemory


def _memory():  # 2 classes × 3 rows: rows 0..5
    return AddressableMemory(2, 3, 3, (1, 4, 4), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["forward", "decode", "labels"])
@pytest.mark.parametrize("rows, exc, match", [
    (torch.tensor([0, 7]), ValueError, r"rows must hold row numbers in \[0, num_classes·rows_per_class = 6\), "
                                       r"got values in \[0, 7\]"),
    (torch.tensor([-1, 2]), ValueError, r"rows must hold row numbers .* got values in \[-1, 2\]"),
    (torch.tensor([0.0, 1.0]), TypeError, r"rows must have dtype int64"),
    ([0, 1], TypeError, r"rows must be a torch.Tensor"),
], ids=["past-the-end", "negative", "float", "list"])
def test_bad_rows_name_the_argument(method, rows, exc, match):
    with pytest.raises(exc, match=match):
        getattr(_memory(), method)(rows)


def test_rows_in_range_decode_and_label():
    mem = _memory()
    assert mem.labels(torch.tensor([[0, 5], [2, 3]])).tolist() == [[0, 1], [0, 1]]
    torch.testing.assert_close(mem(torch.tensor([0, 5])), mem()[[0, 5]])
