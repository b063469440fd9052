"""Drawing attributions, and the modality's face to files.

Plots that compare methods are modality-free (:mod:`fex.render.plots`). Everything that
depends on the modality goes through the masker: ``masker.renderer()`` returns a
:class:`Renderer` that reads user inputs (image files, text files) and draws attributions
(:class:`~fex.render.image.ImageRenderer`: heatmap PNGs; :class:`~fex.render.text.TextRenderer`:
HTML pages of highlighted words and coloured words in the terminal). :func:`markdown_table` writes
every markdown table fex prints.
"""
from fex.render.base import Renderer, markdown_table

__all__ = ["Renderer", "markdown_table"]
