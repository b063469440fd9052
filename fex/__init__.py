"""fex: fast amortized explanations of black-box classifiers (FEX, Pan et al., IJCAI 2025).

    import fex
    explainer = fex.load_explainer("explainer.ckpt", target=my_model)   # the checkpoint is the explainer
    attributions = explainer.attribute(images)          # input shape, one forward pass
    scores = explainer.feature_scores(images)           # [B, F]
    short = fex.compress(text_explainer, texts, keep=0.5)   # the top half of each text's words, in order
"""
from fex.compat import patch_torchvision_ops

patch_torchvision_ops()  # before anything imports pytorch_lightning -> torchmetrics -> torchvision

from fex import gate  # noqa: E402,F401  (installs the trust gate behind explain(verify=...))
from fex.blackbox import BlackBox  # noqa: E402
from fex.compression import compress  # noqa: E402
from fex.errors import (CheckpointError, DataError, FexError, InputError, TargetError,  # noqa: E402
                        TargetMismatchError)
from fex.explainer import build_explainer, load_explainer  # noqa: E402
from fex.module import ExplainerModule  # noqa: E402
from fex.version import __version__  # noqa: E402,F401

__all__ = ["BlackBox", "ExplainerModule", "build_explainer", "load_explainer", "compress", "FexError", "InputError", "TargetError",
           "CheckpointError", "TargetMismatchError", "DataError"]
