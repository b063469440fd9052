"""Request parsing and validation, done in the HTTP process before anything reaches a model worker.

Every explain/compare request is turned into one canonical JSON body, or refused with a 4xx
status and a one-line ``{"detail": reason}``:

* images: ``{"kind": "image", "n": N, "shape": [C, H, W], "pixels": base64(float32 [N, C, H, W])}``
* texts: ``{"kind": "text", "n": N, "texts": [...]}``

plus ``target`` (None or one class per input), ``method`` and ``map``. What a client may send:

* ``application/json``: ``{"image": [[...]]}`` (an [H, W] or [C, H, W] array of floats, the model's own
  scale), ``{"images": [...]}`` (a list of them), ``{"image": "data:image/png;base64,..."}`` (an encoded
  PNG/JPEG), ``{"text": "..."}`` or ``{"texts": [...]}``; optional ``"target"`` (class index, or one per
  input), ``"method"`` (``fex`` or a per-instance method) and ``"map": false`` (omit the input-shaped map).
* ``multipart/form-data``: a file field ``image`` (PNG/JPEG) or a field ``text``, and optionally
  ``target`` / ``method`` fields.
* a raw ``image/png`` / ``image/jpeg`` body, a ``text/plain`` body, or ``application/x-npy`` (a NumPy
  ``.npy`` array of N images ``[N, C, H, W]`` or one ``[C, H, W]`` / ``[H, W]``: the fast path for
  many images, no JSON number parsing).

For bodies other than JSON, ``target``, ``method`` and ``map`` may be given as query parameters
(``/explain?method=kernel_shap&map=false``).

Encoded images are converted to the explainer's channels and resized to its input size (as
``fex-explain`` does), scaled to [0, 1]; arrays must already have the exact shape.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import numpy as np

METHODS = ("fex", "feature_ablation", "kernel_shap")
JSON_FIELDS = ("image", "images", "text", "texts", "target", "method", "map")


class RequestError(Exception):
    """A bad request: HTTP ``status`` and a one-line ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = int(status)
        self.reason = reason.splitlines()[0] if reason else "bad request"


@dataclass
class InputSpec:
    """What the served explainer accepts; built from the checkpoint's masker config (no model needed)."""

    modality: str  # "image" | "text"
    input_shape: tuple[int, int, int] | None = None  # [C, H, W] for images
    num_classes: int | None = None
    max_inputs: int = 256  # inputs per request
    max_text_chars: int = 20_000
    max_image_pixels: int = 40_000_000  # encoded images larger than this are refused from their header
    methods: tuple[str, ...] = METHODS
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict, **limits: Any) -> "InputSpec":
        masker = dict(config.get("masker") or {})
        target = str(masker.get("_target_", ""))
        n = config.get("num_classes") or (config.get("policy") or {}).get("num_classes")
        if masker.get("input_shape") is not None or target.endswith("PatchMasker"):
            shape = masker.get("input_shape")
            if shape is None:
                raise RequestError(500, "image explainer without masker.input_shape cannot be served")
            return cls("image", tuple(int(s) for s in shape), n, **limits)
        return cls("text", None, n, **limits)


# --------------------------------------------------------------------------- images
def decode_image_bytes(data: bytes, shape: tuple[int, int, int], max_pixels: int = 40_000_000) -> np.ndarray:
    """PNG/JPEG bytes -> float32 [C, H, W] in [0, 1] at the explainer's size and channels. An image of
    more than ``max_pixels`` pixels is refused from its header, before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = shape
    if not data:
        raise RequestError(400, "empty image upload")
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            if im.format not in ("PNG", "JPEG"):
                raise RequestError(415, f"unsupported image format {im.format}; send PNG or JPEG")
            if im.width * im.height > max_pixels:
                raise RequestError(413, f"image of {im.width}x{im.height} pixels is larger than the limit of "
                                        f"{max_pixels} pixels")
            im = im.convert("L" if c == 1 else "RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except RequestError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own refusal (twice its MAX_IMAGE_PIXELS), from the header
        raise RequestError(413, f"image is larger than the limit of {max_pixels} pixels") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RequestError(400, f"corrupt or unreadable image ({type(exc).__name__})") from exc
    if c != 1 and c != 3:
        raise RequestError(422, f"encoded images give 1 or 3 channels; this explainer expects {c}: send an array")
    return arr[None] if c == 1 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def image_from_array(value: Any, shape: tuple[int, int, int], i: int = 0) -> np.ndarray:
    """A JSON array ([H, W] for one channel, or [C, H, W]) -> float32 [C, H, W]; exact shape required."""
    c, h, w = shape
    try:
        obj = np.asarray(value, dtype=object)
        if obj.size and not all(type(v) in (int, float) for v in obj.flat):  # true/false/null/strings are not pixels
            raise TypeError
        arr = obj.astype(np.float32)
    except (ValueError, TypeError) as exc:
        raise RequestError(422, f"image {i} is not a rectangular array of numbers") from exc
    if arr.ndim == 2 and c == 1:
        arr = arr[None]
    if arr.shape != (c, h, w):
        want = f"[{h}, {w}] or [{c}, {h}, {w}]" if c == 1 else f"[{c}, {h}, {w}]"
        raise RequestError(422, f"image {i} has shape {list(arr.shape)}; this explainer expects {want}")
    if not np.isfinite(arr).all():
        raise RequestError(422, f"image {i} contains NaN or Inf values")
    return arr


def image_from_json(value: Any, shape: tuple[int, int, int], i: int = 0, max_pixels: int = 40_000_000) -> np.ndarray:
    if isinstance(value, str):  # a data URL or bare base64 of an encoded image
        b64 = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RequestError(400, f"image {i} is a string but not valid base64") from exc
        return decode_image_bytes(data, shape, max_pixels)
    return image_from_array(value, shape, i)


# --------------------------------------------------------------------------- texts
def check_text(value: Any, spec: InputSpec, i: int = 0) -> str:
    if not isinstance(value, str):
        raise RequestError(422, f"text {i} is a {type(value).__name__}, expected a string")
    if not value.split():
        raise RequestError(422, f"text {i} is empty: nothing to explain")
    if len(value) > spec.max_text_chars:
        raise RequestError(413, f"text {i} has {len(value)} characters, more than the limit of {spec.max_text_chars}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON's "\ud800": a lone surrogate no tokenizer can read
        raise RequestError(422, f"text {i} is not valid Unicode (a lone surrogate at character {exc.start})") from exc
    return value


# --------------------------------------------------------------------------- options
def parse_target(value: Any, n: int, num_classes: int | None, from_text: bool = False) -> list[int] | None:
    """``target``: None, one class index for every input, or a list of exactly one per input. A class
    index is an integer (not ``"3"``, ``3.0`` or ``true``); ``from_text`` (a query parameter or form
    field) reads decimal digits."""
    if value is None or (from_text and value == ""):
        return None

    def index(v: Any) -> int:
        if from_text and isinstance(v, str) and v.strip().isdigit():
            return int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise RequestError(422, f"target must be an integer class index or a list of one per input, got {value!r}"[:200])
        return v

    out = [index(v) for v in value] if isinstance(value, list) else [index(value)] * n
    if len(out) != n:
        raise RequestError(422, f"target has {len(out)} entries for {n} inputs")
    if num_classes is not None and any(not 0 <= t < num_classes for t in out):
        raise RequestError(422, f"target class out of range 0..{num_classes - 1}: {out[:8]}")
    return out


def parse_method(value: Any, spec: InputSpec) -> str:
    m = "fex" if value in (None, "") else value
    if not isinstance(m, str) or m not in spec.methods:
        raise RequestError(422, f"unknown method {m!r}; choose from {list(spec.methods)}"[:200])
    return m


def canonical(spec: InputSpec, images: list[np.ndarray] | None = None, texts: list[str] | None = None,
              target: Any = None, method: Any = None, want_map: Any = True, from_text: bool = False) -> dict:
    items = images if images is not None else texts
    if not items:
        raise RequestError(422, "no inputs: send an image, images, a text or texts")
    if len(items) > spec.max_inputs:
        raise RequestError(413, f"{len(items)} inputs in one request, more than the limit of {spec.max_inputs}")
    if not isinstance(want_map, bool):
        raise RequestError(422, f"map must be true or false, got {want_map!r}"[:200])
    out = {"kind": spec.modality, "n": len(items), "target": parse_target(target, len(items), spec.num_classes, from_text),
           "method": parse_method(method, spec), "map": want_map}
    if images is not None:
        out["shape"] = list(spec.input_shape)
        out["pixels"] = base64.b64encode(np.stack(images).astype(np.float32).tobytes()).decode("ascii")
    else:
        out["texts"] = texts
    return out


def from_json(obj: Any, spec: InputSpec) -> dict:
    if not isinstance(obj, dict):
        raise RequestError(422, "request JSON must be an object, e.g. {\"image\": [...]} or {\"text\": \"...\"}")
    unknown = sorted(str(k) for k in obj if k not in JSON_FIELDS)
    if unknown:
        raise RequestError(422, f"unknown field{'s' if len(unknown) > 1 else ''} {unknown}; a request has {list(JSON_FIELDS)}"[:200])
    opts = {"target": obj.get("target"), "method": obj.get("method"), "want_map": obj.get("map", True)}
    keys = [k for k in ("image", "images", "text", "texts") if k in obj]
    if len(keys) != 1:
        want = "image or images" if spec.modality == "image" else "text or texts"
        raise RequestError(422, f"send exactly one of {want}" + (f" (got {keys})" if keys else ""))
    key = keys[0]
    if spec.modality == "image":
        if key.startswith("text"):
            raise RequestError(422, "this explainer explains images; it got text")
        if key == "image":
            return canonical(spec, images=[image_from_json(obj["image"], spec.input_shape, 0, spec.max_image_pixels)], **opts)
        vals = obj["images"]
        if not isinstance(vals, list):
            raise RequestError(422, "images must be a list of images")
        if len(vals) > spec.max_inputs:
            raise RequestError(413, f"{len(vals)} inputs in one request, more than the limit of {spec.max_inputs}")
        return canonical(spec, images=[image_from_json(v, spec.input_shape, i, spec.max_image_pixels)
                                       for i, v in enumerate(vals)], **opts)
    if key.startswith("image"):
        raise RequestError(422, "this explainer explains text; it got an image")
    if key == "text":
        return canonical(spec, texts=[check_text(obj["text"], spec)], **opts)
    vals = obj["texts"]
    if not isinstance(vals, list):
        raise RequestError(422, "texts must be a list of strings")
    if len(vals) > spec.max_inputs:
        raise RequestError(413, f"{len(vals)} inputs in one request, more than the limit of {spec.max_inputs}")
    return canonical(spec, texts=[check_text(v, spec, i) for i, v in enumerate(vals)], **opts)


async def from_form(form: Any, spec: InputSpec) -> dict:
    opts = {"target": form.get("target"), "method": form.get("method"), "from_text": True,
            "want_map": str(form.get("map", "true")).lower() not in ("false", "0", "no")}
    if spec.modality == "image":
        up = form.get("image")
        if up is None:
            raise RequestError(422, "multipart upload needs a file field named 'image'")
        data = await up.read() if hasattr(up, "read") else str(up).encode()
        return canonical(spec, images=[decode_image_bytes(data, spec.input_shape, spec.max_image_pixels)], **opts)
    text = form.get("text")
    if text is None:
        raise RequestError(422, "multipart form needs a field named 'text'")
    if hasattr(text, "read"):
        text = (await text.read()).decode("utf-8", errors="replace")
    return canonical(spec, texts=[check_text(text, spec)], **opts)


def images_from_npy(body: bytes, spec: InputSpec) -> list[np.ndarray]:
    c, h, w = spec.input_shape
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - anything np.load refuses
        raise RequestError(400, f"body is not a readable .npy array ({type(exc).__name__})") from exc
    if arr.dtype.kind not in "fiu":
        raise RequestError(422, f".npy array has dtype {arr.dtype}; send numbers")
    if c == 1 and arr.ndim in (2, 3):  # [H, W] or [N, H, W]
        arr = arr.reshape(-1, 1, *arr.shape[-2:])
    elif arr.ndim == 3:  # [C, H, W]
        arr = arr[None]
    if arr.ndim != 4 or tuple(arr.shape[1:]) != (c, h, w):
        raise RequestError(422, f".npy array has shape {list(arr.shape)}; this explainer expects [N, {c}, {h}, {w}]")
    if len(arr) > spec.max_inputs:
        raise RequestError(413, f"{len(arr)} inputs in one request, more than the limit of {spec.max_inputs}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise RequestError(422, "the .npy images contain NaN or Inf values")
    return list(arr)


def query_options(query: str) -> dict:
    from urllib.parse import parse_qs

    q = {k: v[-1] for k, v in parse_qs(query or "").items()}
    out: dict[str, Any] = {"target": q.get("target"), "method": q.get("method"), "from_text": True}
    if "map" in q:
        out["want_map"] = q["map"].lower() not in ("false", "0", "no")
    return out


async def parse_body(body: bytes, content_type: str, spec: InputSpec,
                     form_parser: Callable[[], Awaitable[Any]] | None = None, query: str = "") -> dict:
    """Raw request -> canonical body (see the module docstring) or :class:`RequestError`."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    opts = query_options(query)
    if ctype in ("application/json", ""):
        if not body.strip():
            raise RequestError(400, "empty request body")
        try:
            obj = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"request body is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from exc
        return from_json(obj, spec)
    if ctype == "multipart/form-data" and form_parser is not None:
        try:
            form = await form_parser()
        except RequestError:
            raise
        except Exception as exc:  # noqa: BLE001 - malformed multipart
            raise RequestError(400, f"malformed multipart body ({type(exc).__name__})") from exc
        return await from_form(form, spec)
    if ctype in ("image/png", "image/jpeg", "image/jpg", "application/octet-stream", "application/x-npy"):
        if spec.modality != "image":
            raise RequestError(415, "this explainer explains text; send text/plain or JSON {\"text\": ...}")
        if ctype == "application/x-npy":
            return canonical(spec, images=images_from_npy(body, spec), **opts)
        return canonical(spec, images=[decode_image_bytes(body, spec.input_shape, spec.max_image_pixels)], **opts)
    if ctype == "text/plain":
        if spec.modality != "text":
            raise RequestError(415, "this explainer explains images; send an image or JSON {\"image\": ...}")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(400, "text/plain body is not UTF-8") from exc
        return canonical(spec, texts=[check_text(text, spec)], **opts)
    raise RequestError(415, f"unsupported content type {ctype!r}; send JSON, multipart/form-data, an image or text/plain")


def parse_gallery(body: bytes, max_n: int) -> dict:
    try:
        obj = json.loads(body) if body.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, "request body is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise RequestError(422, "gallery request must be a JSON object like {\"n\": 8}")
    n = obj.get("n", max_n)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_n:
        raise RequestError(422, f"n must be an integer from 1 to {max_n}")
    return {"op": "gallery", "n": n}


def decode_pixels(body: dict) -> "np.ndarray":
    """Canonical image body -> float32 [N, C, H, W] (worker side)."""
    arr = np.frombuffer(base64.b64decode(body["pixels"]), dtype=np.float32)
    return arr.reshape(int(body["n"]), *[int(s) for s in body["shape"]])


# --------------------------------------------------------------------------- ASGI gate
class RequestGate:
    """ASGI middleware: bounded body read, parse + validate, rewrite to the canonical JSON body.

    Bad requests are answered here (4xx, one-line ``detail``) and never reach a model worker.
    ``paths`` maps a POST path to ``"input"`` (explain/compare) or ``"gallery"``; gallery requests
    are forwarded to the ``gallery_to`` route as ``{"op": "gallery", "n": n}``. A request still in
    flight when a stopping server's grace period ends gets a 503 (not uvicorn's bare 500).
    """

    def __init__(self, app: Any, spec: InputSpec, paths: dict[str, str], max_bytes: int, gallery_max: int = 16,
                 gallery_to: str = "/compare") -> None:
        self.app = app
        self.spec = spec
        self.paths = dict(paths)
        self.max_bytes = int(max_bytes)
        self.gallery_max = int(gallery_max)
        self.gallery_to = gallery_to

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise RequestError(413, f"payload of {int(declared)} bytes is larger than the limit of {self.max_bytes}")
            body = await self._read(receive)
            kind = self.paths[scope["path"]]
            if kind == "gallery":
                canon = parse_gallery(body, self.gallery_max)
                scope = {**scope, "path": self.gallery_to, "raw_path": self.gallery_to.encode()}
            else:
                canon = await parse_body(body, headers.get("content-type", ""), self.spec,
                                         form_parser=lambda: self._form(scope, body),
                                         query=scope.get("query_string", b"").decode("latin-1"))
        except RequestError as err:
            await self._reply(send, err.status, {"detail": err.reason})
            return
        except Exception as exc:  # noqa: BLE001 - never let a request take the server down
            await self._reply(send, 400, {"detail": f"bad request ({type(exc).__name__})"})
            return
        data = json.dumps(canon).encode()
        new_headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
        new_headers += [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()  # after the body: wait for disconnect as the server would

        started = False

        async def send_tracked(msg: dict) -> None:
            nonlocal started
            started = started or msg.get("type") == "http.response.start"
            await send(msg)

        try:
            await self.app({**scope, "headers": new_headers}, replay, send_tracked)
        except asyncio.CancelledError:  # the server stopped and its grace period ran out (uvicorn cancels)
            if started:
                raise
            await self._reply(send, 503, {"detail": "the server is shutting down; send the request again"})

    async def _read(self, receive: Callable) -> bytes:
        chunks, total = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise RequestError(400, "client disconnected")
            part = msg.get("body", b"")
            total += len(part)
            if total > self.max_bytes:
                raise RequestError(413, f"payload larger than the limit of {self.max_bytes} bytes")
            chunks.append(part)
            if not msg.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _form(scope: dict, body: bytes) -> Any:
        from starlette.requests import Request

        done = False

        async def rcv() -> dict:
            nonlocal done
            if done:
                return {"type": "http.disconnect"}
            done = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await Request(scope, rcv).form()

    @staticmethod
    async def _reply(send: Callable, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})
