"""Device-resident pseudo-labelling: features extracted on the training device are labelled there.

numpy features and torch tensors on the CPU give the same labels, centres and soft targets bit for bit; on CUDA
(skipped where torch sees no CUDA device) the hard labels are the CPU's and the soft targets agree to 1e-4. The
Trainer hands ``make_epoch_labels`` tensors on its device, not numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.bench_label_transfer import cross_modal_features
from mult.config import preset_config
from mult.train import trainer as trainer_module
from mult.train.clustering import as_feature_tensor
from mult.train.pseudo_labels import EpochLabels, make_epoch_labels
from mult.train.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore:.*random weights")  # the tiny preset's random-init ResNet-18

NO_CUDA = "needs a CUDA GPU: torch sees none (CPU wheel or no device); run on a GPU machine"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA))]
#: (stage, association): stage 1, MULT, and the two baselines that share its inputs
CASES = [("dcl", "mult"), ("mult", "mult"), ("mult", "hungarian"), ("mult", "ot")]


@pytest.fixture(scope="module")
def features():
    """Cross-modality features of unequal per-person counts: several DBSCAN clusters and some outliers."""
    fv, fr, _, _ = cross_modal_features(360, 180, 256, seed=3)
    return fv, fr


def _config(association: str, **changes):
    return preset_config("tiny", association=association, k1=30, k2=6, eps=0.6, min_samples=4, **changes)


def _host(x) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def assert_same_labels(got: EpochLabels, want: EpochLabels, *, atol: float) -> None:
    """Hard labels identical; centres and soft targets within ``atol`` (0: bit for bit)."""
    compare = np.testing.assert_array_equal if atol == 0 else (
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=atol))
    for name in ("labels_v", "labels_r", "cm_labels_v", "cm_labels_r"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert isinstance(a, np.ndarray), name
            np.testing.assert_array_equal(a, b, err_msg=name)
    for mine, theirs in ((got.visible, want.visible), (got.infrared, want.infrared)):
        np.testing.assert_array_equal(mine.labels, theirs.labels)
        compare(_host(mine.centres), _host(theirs.centres))
        if atol == 0:
            assert (mine.jaccard != theirs.jaccard).nnz == 0
    assert set(got.targets) == set(want.targets)
    for name, target in got.targets.items():
        assert isinstance(target, np.ndarray), name
        compare(target, want.targets[name])
    for name, initial in got.initial_cm_labels.items():
        np.testing.assert_array_equal(initial, want.initial_cm_labels[name], err_msg=name)


def test_as_feature_tensor_wraps_without_copying_and_moves_when_asked():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    t = as_feature_tensor(x)
    assert isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.data_ptr() == x.ctypes.data
    leaf = torch.ones(2, 2, requires_grad=True)
    assert as_feature_tensor(leaf).requires_grad is False and as_feature_tensor(leaf).data_ptr() == leaf.data_ptr()
    assert as_feature_tensor(np.array([0, -1, 1])).dtype == torch.int64
    assert as_feature_tensor(x, "cpu").device.type == "cpu"


@pytest.mark.parametrize("stage, association", CASES)
def test_cpu_tensors_give_the_numpy_labels_bit_for_bit(features, stage, association):
    fv, fr = features
    cfg = _config(association)
    from_numpy = make_epoch_labels(fv, fr, cfg, stage)
    from_torch = make_epoch_labels(torch.from_numpy(fv), torch.from_numpy(fr), cfg, stage)
    assert from_numpy.visible.num_clusters >= 3 and (from_numpy.visible.labels < 0).any()
    assert from_numpy.cross_modal == (stage == "mult")
    assert isinstance(from_numpy.visible.centres, np.ndarray)  # numpy in, numpy centres out (as before)
    assert isinstance(from_torch.visible.centres, torch.Tensor)  # a tensor in: centres stay a tensor there
    assert_same_labels(from_torch, from_numpy, atol=0)
    host = from_torch.on_host()  # what the trainer pickles to other ranks
    assert isinstance(host.visible.centres, np.ndarray) and isinstance(host.infrared.centres, np.ndarray)
    assert_same_labels(host, from_numpy, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("stage, association", CASES)
def test_cuda_labels_match_the_cpu(features, stage, association):
    fv, fr = features
    cfg = _config(association)
    on_cpu = make_epoch_labels(torch.from_numpy(fv), torch.from_numpy(fr), cfg, stage)
    on_gpu = make_epoch_labels(torch.from_numpy(fv).cuda(), torch.from_numpy(fr).cuda(), cfg, stage)
    assert on_gpu.visible.centres.is_cuda and on_gpu.infrared.centres.is_cuda  # memories start from them there
    assert_same_labels(on_gpu, on_cpu, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_trainer_labels_its_features_on_its_device(synth_sysu_small, tmp_path, monkeypatch, device):
    cfg = preset_config("tiny", data_root=str(synth_sysu_small), epochs=3, stage_one_epochs=2, eval_every=0,
                        association="mult", device=device)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    seen = []

    def recording(feats_v, feats_r, *args, **kwargs):
        seen.append((feats_v, feats_r))
        return make_epoch_labels(feats_v, feats_r, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "make_epoch_labels", recording)
    labels = trainer.pseudo_labels(2, "mult")
    (feats_v, feats_r), = seen
    for feats, paths in ((feats_v, trainer.data.visible_paths), (feats_r, trainer.data.infrared_paths)):
        assert isinstance(feats, torch.Tensor) and feats.device == trainer.device and feats.dtype == torch.float32
        assert feats.shape[0] == len(paths)
    assert isinstance(labels.visible.centres, torch.Tensor) and labels.visible.centres.device == trainer.device
    # the same features through the numpy path: the same labels (bit for bit on the CPU)
    on_host = make_epoch_labels(feats_v.cpu().numpy(), feats_r.cpu().numpy(), cfg, "mult", epoch=2,
                                true_ids=(trainer.data.visible_pids, trainer.data.infrared_pids))
    assert_same_labels(labels, on_host, atol=0 if device == "cpu" else 1e-4)
