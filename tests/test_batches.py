import pytest
import torch

from vae.batches import TensorBatches


def test_each_pass_is_a_permutation_and_reshuffles() -> None:
    images = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 1, 32, 32).contiguous()
    batches = TensorBatches(images, batch_size=16, seed=1)
    assert len(batches) == 4
    passes = [torch.cat([b[:, 0, 0, 0] for b in batches]) for _ in range(3)]
    for order in passes:
        assert sorted(order.tolist()) == list(range(50))
    assert not torch.equal(passes[0], passes[1])


def test_order_is_reproducible_with_the_seed() -> None:
    images = torch.zeros(30, 1, 32, 32, dtype=torch.uint8)
    first, second, other = (TensorBatches(images, 8, seed=s) for s in (7, 7, 8))
    for _ in range(2):
        a, b, c = first.order(), second.order(), other.order()
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_labels_stay_aligned_and_no_shuffle_keeps_order() -> None:
    labels = torch.arange(20)
    images = labels.to(torch.uint8).view(20, 1, 1, 1).expand(20, 1, 32, 32).contiguous()
    for x, y in TensorBatches(images, 6, labels=labels, seed=3):
        assert torch.equal(x[:, 0, 0, 0].long(), y)
    ordered = torch.cat([x for x, _ in TensorBatches(images, 6, labels=labels, shuffle=False)])
    assert torch.equal(ordered, images)


def test_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        TensorBatches(torch.zeros(4, 1, 32, 32), 0)
