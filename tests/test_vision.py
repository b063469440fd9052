"""torchvision targets on this CPU-only torch: the compat shim + a real resnet18 black box.

torchvision is an optional extra; the setup script installs its wheel (--no-deps) into
.cache/torchvision-site so the main environment stays torchvision-free (fex must run without it).
The test runs in a subprocess with that folder on PYTHONPATH.
"""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SITE = ROOT / ".cache" / "torchvision-site"

SCRIPT = r"""
import fex, torch, pytorch_lightning, torchvision  # shim first: lightning -> torchmetrics -> torchvision
from fex.targets.vision import torchvision_model
from fex.blackbox import BlackBox
from fex.explainer import build_explainer
from fex.data.mnist import IndexedTensorDataset
torch.manual_seed(0)
net = torchvision_model("resnet18", num_classes=10)
torch.save(net.state_dict(), "rn18.pt")
bb = BlackBox(torchvision_model("resnet18", num_classes=10, weights_path="rn18.pt"), num_classes=10)
x = torch.rand(32, 3, 32, 32)
assert torch.allclose(bb(x), torch.softmax(net(x), -1), atol=1e-5)
m = build_explainer({"masker": {"_target_": "fex.maskers.image.PatchMasker", "grid": [8, 8], "input_shape": [3, 32, 32]},
                     "policy": {"_target_": "fex.policy.Policy", "num_classes": 10, "hidden": 32,
                                "backbone": {"_target_": "fex.policy.ConvBackbone", "in_channels": 3, "width": 8,
                                             "depth": 1, "out_dim": 16}},
                     "objective": {}, "num_classes": 10, "val_auc_examples": 0}, blackbox=bb)
loader = torch.utils.data.DataLoader(IndexedTensorDataset(x, torch.zeros(32, dtype=torch.long)), batch_size=16)
pytorch_lightning.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          accelerator="cpu").fit(m, loader)
a = m.attribute(x[:4])
assert a.shape == (4, 3, 32, 32) and m._train_queries == 2 * 16 * 6
print("VISION-OK", tuple(a.shape))
"""


@pytest.mark.skipif(not SITE.is_dir(), reason="vision extra not installed (run scripts/setup.sh)")
def test_torchvision_resnet_target_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT)])}
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "VISION-OK (4, 3, 32, 32)" in res.stdout


def test_missing_torchvision_gives_clear_error(monkeypatch):
    import importlib.util

    from fex.compat import import_torchvision
    from fex.errors import FexError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchvision" else real(name, *a))
    with pytest.raises(FexError, match=r"pip install 'fex\[vision\]'"):
        import_torchvision()
