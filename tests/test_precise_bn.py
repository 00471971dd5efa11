"""BatchNorm re-calibration: running statistics become the average of the batches' statistics."""

import warnings

import torch
from torch import nn

from mult.train.precise_bn import recalibrate_batchnorm


def test_running_stats_are_the_batch_average():
    bn_model = nn.Sequential(nn.BatchNorm1d(2))

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = bn_model

        def forward(self, v, r):
            return self.body(torch.cat([v, r]))

    model = Wrapper().eval()
    b1 = (torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.tensor([[4.0, 5.0]]))  # mean (2, 3)
    b2 = (torch.tensor([[6.0, 7.0]]), torch.tensor([[8.0, 9.0], [10.0, 11.0]]))  # mean (8, 9)
    assert recalibrate_batchnorm(model, [b1, b2]) == 2
    bn = bn_model[0]
    assert torch.allclose(bn.running_mean, torch.tensor([5.0, 6.0]))
    assert torch.allclose(bn.running_var, torch.tensor([4.0, 4.0]))  # unbiased var of (0,2,4) and (6,8,10)
    assert bn.momentum == 0.1 and not model.training


def test_encoder_eval_features_move_towards_train_mode_features():
    from mult.model import TwoStreamEncoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        enc = TwoStreamEncoder("resnet18")
    x, r = torch.rand(8, 3, 64, 32), torch.rand(8, 3, 64, 32)
    enc.train()
    with torch.no_grad():
        train_feat = torch.nn.functional.normalize(enc(x, r)[0], dim=1)
    enc.eval()

    def agreement():
        with torch.no_grad():
            return (enc.embed(x, "visible") * train_feat).sum(1).mean().item()

    before = agreement()
    recalibrate_batchnorm(enc, [(x, r)])
    after = agreement()
    assert after > before and after > 0.99
