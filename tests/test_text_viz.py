"""HTML and terminal views of word attributions."""
from __future__ import annotations

import io

import torch

from fex.render.text import ansi_words, html_page, print_terminal, write_html


def test_html_page(tmp_path):
    words = [["a", "<b>great</b>", "film"], ["bad"]]
    scores = torch.tensor([[0.1, 0.9, -0.2], [0.5, 0.0, 0.0]])
    page = html_page(words, scores, predictions=["fresh", "rotten"], probabilities=[0.93, 0.71],
                     method_rows={"kernel_shap": scores})
    assert "&lt;b&gt;great&lt;/b&gt;" in page and "<b>great</b>" not in page
    assert "prediction <b>fresh</b>" in page and "probability 0.930" in page
    assert "rgba(22,163,74,1.000)" in page  # the top word is fully saturated
    assert "rgba(220,38,38" in page  # negative scores are red
    assert page.count("class='ex'") == 2
    p = write_html(tmp_path / "x.html", words, scores)
    assert p.read_text(encoding="utf-8").startswith("<!doctype html>")


def test_terminal_colours():
    s = ansi_words(["good", "film"], [1.0, 0.0])
    assert "\x1b[48;2;22;163;74m" in s and s.endswith("\x1b[0m")
    buf = io.StringIO()
    print_terminal([["good", "film"]], [[0.8, 0.1]], predictions=["fresh"], probabilities=[0.9], file=buf)
    assert buf.getvalue() == "[0] fresh p=0.900: good[0.80] film[0.10]\n"  # not a TTY: no colour


def test_the_word_masker_draws_its_own_gallery(tmp_path):
    """Modality lives in the masker: its renderer writes the HTML page (FEX row + method rows)."""
    from fex.maskers.text import WordMasker

    masker = WordMasker()
    x = masker.encode(["a great day", "a dull day"])
    fex_scores, other = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.3, 0.1]]), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    p = masker.renderer().gallery(x, [("FEX", fex_scores), ("kernel_shap", other)], tmp_path / "g",
                                  ["y=fresh pred=fresh", "y=rotten pred=rotten"])
    page = p.read_text(encoding="utf-8")
    assert p.name == "g.html" and page.count("class='ex'") == 2
    assert "#0 &middot; y=fresh pred=fresh" in page and "kernel_shap" in page
    assert 'title="0.9000">great</span>' in page
