"""Moved to :mod:`fex.config` (below the explainer, which builds from it); this path keeps old imports working."""
from fex.config import (DATA_META_KEYS, build, build_blackbox, build_data, compose, conf_dir,  # noqa: F401
                        instantiate_list, to_dict, with_checkpoint_defaults)
