"""fex: fast amortized explanations of black-box classifiers (FEX, Pan et al., IJCAI 2025).

    from fex import ExplainerModule
    explainer = ExplainerModule.from_checkpoint("explainer.ckpt", target=my_model)
    attributions = explainer.attribute(images)          # input shape, one forward pass
    scores = explainer.feature_scores(images)           # [B, F]
"""
from fex.compat import patch_torchvision_ops

patch_torchvision_ops()  # before anything imports pytorch_lightning -> torchmetrics -> torchvision

from fex.blackbox import BlackBox  # noqa: E402
from fex.errors import CheckpointError  # noqa: E402, DataError, FexError, InputError, TargetError, TargetMismatchError
from fex.module import ExplainerModule  # noqa: E402

load_explainer = ExplainerModule.from_checkpoint

__all__ = ["BlackBox", "ExplainerModule", "load_explainer", "FexError", "InputError", "TargetError",
           "CheckpointError", "TargetMismatchError", "DataError"]
__version__ = "0.1.0"
