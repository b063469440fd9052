"""The new method= options compose with evaluate.yaml and build on fex's black box and masker."""
import pytest
import torch
from hydra.utils import instantiate

from fex.blackbox import BlackBox
from fex.maskers.image import PatchMasker
from tests.conftest import compose
from tests.synth import LinearPatchTarget

NEW = {"spex": "SpexInteractions", "proxyspex": "ProxySpexInteractions", "psig": "PathSampledIG",
       "rloco": "RegionalLOCO"}


def test_new_methods_compose_and_instantiate(tmp_path):
    pytest.importorskip("shapiq")
    cfg = compose("evaluate", ["checkpoint=x.ckpt", f"method=[{','.join(NEW)}]", "method.psig.n_steps=4",
                               "method.rloco.n_regions=2"], output_dir=tmp_path)
    bb = BlackBox(LinearPatchTarget(), output="logits")
    masker = PatchMasker(grid=(7, 7), input_shape=(1, 28, 28))
    for name, cls in NEW.items():
        m = instantiate(cfg.method[name], blackbox=bb, masker=masker)
        assert type(m).__name__ == cls and m.name == name
    x = torch.rand(2, 1, 28, 28)
    for name in ("psig", "rloco"):  # the cheap ones run end to end
        s = instantiate(cfg.method[name], blackbox=bb, masker=masker).attribute(x, 1)
        assert s.shape == (2, 49) and torch.isfinite(s).all()
