"""Cluster memory (METHOD.md §6.1): logits and the sequential momentum update, checked by hand."""

import math

import torch

from mult.train.memory import ClusterMemory, memory_logits, occurrence_rank


def test_logits_are_cosine_over_temperature():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feats = torch.tensor([[3.0, 4.0]])  # normalised: (0.6, 0.8)
    z = memory_logits(feats, protos, temp=0.05)
    assert torch.allclose(z, torch.tensor([[0.6 / 0.05, 0.8 / 0.05]]))


def test_occurrence_rank_counts_earlier_equal_labels():
    labels = torch.tensor([2, 0, 2, 2, 1, 0])
    assert occurrence_rank(labels).tolist() == [0, 0, 1, 2, 0, 1]


def test_update_matches_sequential_reference_by_hand():
    # One slot at (1, 0); two samples of that slot: (0, 1) then (0, 1); m = 0.1.
    mem = ClusterMemory(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), momentum=0.1)
    mem.update(torch.tensor([[0.0, 2.0], [0.0, 5.0]]), torch.tensor([0, 0]))
    # step 1: 0.1*(1,0) + 0.9*(0,1) = (0.1, 0.9) -> /sqrt(0.82)
    a = torch.tensor([0.1, 0.9]) / math.sqrt(0.82)
    # step 2: 0.1*a + 0.9*(0,1), then normalise
    b = 0.1 * a + torch.tensor([0.0, 0.9])
    b = b / b.norm()
    assert torch.allclose(mem.features[0], b, atol=1e-6)
    assert torch.allclose(mem.features[1], torch.tensor([0.0, 1.0]))  # untouched


def test_update_equals_per_sample_loop_on_random_batch():
    torch.manual_seed(0)
    protos = torch.randn(5, 8)
    feats, labels = torch.randn(40, 8), torch.randint(-1, 5, (40,))
    mem = ClusterMemory(protos, momentum=0.1)
    mem.update(feats, labels)

    ref = torch.nn.functional.normalize(protos, dim=1)
    for x, y in zip(torch.nn.functional.normalize(feats, dim=1), labels):
        if y < 0:
            continue
        ref[y] = 0.1 * ref[y] + 0.9 * x
        ref[y] /= ref[y].norm()
    assert torch.allclose(mem.features, ref, atol=1e-6)


def test_state_dict_round_trip():
    mem = ClusterMemory(torch.randn(3, 4), temp=0.07, momentum=0.2)
    back = ClusterMemory.from_state_dict(mem.state_dict())
    assert torch.equal(back.features, mem.features) and back.temp == 0.07 and back.momentum == 0.2
