"""Methods beyond single-feature scores, on fex's shared features, black box and metrics.

* :mod:`fex.methods.spex` - SPEX / ProxySPEX interactions (via ``shapiq``) with Shapley values derived
  from the recovered Möbius transform.
* :mod:`fex.methods.psig` - path-sampled integrated gradients (white box).
* :mod:`fex.methods.rloco` - regional leave-one-covariate-out explanations (R-LOCO).
* :mod:`fex.methods.kmeans_prototypes` - k-means self-explanation of a CNN target (KMEx): nearest-prototype
  classifier on its encoder output, prototypes and concept maps (white box, scikit-learn).
* :mod:`fex.methods.cost` - exact cost accounting: queries, target forward/backward passes.

Each is a :class:`fex.baselines.Method` (``attribute(x, target) -> [B, F]``) and a Hydra
``method=`` option (``conf/method/{spex,proxyspex,psig,rloco,kmeans_prototypes}.yaml``). Modules import lazily, so
``import fex`` does not need the optional ``interactions`` extra.
"""
