"""Input images -> prompt embeddings, with a cache (generated images become PNGs in
imagemini/models/image_output.py).

    vision = VisionEncoder(model, processor, EncoderCache(256 << 20))
    ids = vision.with_echo(ids, images)             # the last image's codes, where the checkpoint asks (processor.py)
    embeds = vision.prompt_embeds(ids, images)      # blocking: call it with asyncio.to_thread

Encoder cache: the vision encoder's output for one image ([N, hidden], model dtype) under a key
made of the image's content key (media.py: sha256 of its bytes, or of the PDF page it is) and
the processor settings; least recently used entries go when the total passes the byte budget.
An image sent again is neither decoded nor encoded again; the misses of one request are encoded
in one batch. `stats()` (hits, misses, entries, bytes) is shown by /health. A new picture on a
checkpoint with a source echo misses twice (its features, its echo's codes) but is decoded and
resized once: the last few preprocessed pictures are kept for that.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict

import torch

from imagemini.models.janus import Janus
from imagemini.models.processor import Processor

from .errors import bad_request
from .media import InputImage


RECENT_PIXELS = 8  # preprocessed pictures kept for a request's second look (a few concurrent requests)


class EncoderCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            features = self._entries.get(key)
            if features is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return features

    def put(self, key: str, features: torch.Tensor) -> None:
        size = features.numel() * features.element_size()
        if size > self.budget_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.numel() * old.element_size()
            self._entries[key] = features
            self._bytes += size
            while self._bytes > self.budget_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.numel() * evicted.element_size()

    def stats(self) -> dict:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "entries": len(self._entries),
                "bytes": self._bytes,
                "budget_bytes": self.budget_bytes,
            }


class VisionEncoder:
    def __init__(self, model: Janus, processor: Processor, cache: EncoderCache) -> None:
        self.model = model
        self.processor = processor
        self.cache = cache
        self.dtype = next(model.parameters()).dtype
        settings = json.dumps(processor.image_cfg.to_dict(), sort_keys=True)
        self._salt = hashlib.sha256(f"{settings}|{self.dtype}".encode()).hexdigest()[:16]
        self._recent_pixels: OrderedDict[str, torch.Tensor] = OrderedDict()  # by content key
        self._recent_lock = threading.Lock()

    def cache_key(self, image: InputImage) -> str:
        return f"{image.key}:{self._salt}"

    def features(self, images: list[InputImage]) -> list[torch.Tensor]:
        """[N, hidden] per image, from the cache or encoded (the misses in one batch)."""
        out: list[torch.Tensor | None] = []
        todo: dict[str, list[int]] = {}  # cache key -> positions (one image sent twice is encoded once)
        for i, image in enumerate(images):
            key = self.cache_key(image)
            if key in todo:
                todo[key].append(i)
                out.append(None)
                continue
            cached = self.cache.get(key)
            out.append(cached)
            if cached is None:
                todo[key] = [i]
        if todo:
            pixels = [self._pixels(images[positions[0]]) for positions in todo.values()]
            with torch.inference_mode():
                encoded = self.model.encode_images(torch.stack(pixels).to(self.model.device, self.dtype))
            for (key, positions), features in zip(todo.items(), encoded.cpu()):
                features = features.clone()
                self.cache.put(key, features)
                for i in positions:
                    out[i] = features
        return out  # type: ignore[return-value]

    def _pixels(self, image: InputImage) -> torch.Tensor:
        with self._recent_lock:
            pixels = self._recent_pixels.get(image.key)
        if pixels is not None:
            return pixels
        picture = image.load()  # its own errors (too large, undecodable) are already the right 400s
        try:
            pixels = self.processor.preprocess(picture)
        except Exception as exc:  # an odd mode or size PIL could not resample
            raise bad_request(f"{image.param}: the image could not be processed ({type(exc).__name__})",
                              param=image.param, code="invalid_image") from None
        with self._recent_lock:
            self._recent_pixels[image.key] = pixels
            while len(self._recent_pixels) > RECENT_PIXELS:
                self._recent_pixels.popitem(last=False)
        return pixels

    def with_echo(self, ids: list[int], images: list[InputImage]) -> list[int]:
        """`ids` with the last image's source echo, on checkpoints that declare one (processor.py)."""
        if self.processor.echo is None or not images:
            return ids
        key = self.cache_key(images[-1]) + ":echo"
        codes = self.cache.get(key)
        if codes is None:
            pixels = self.processor.vq_range(self._pixels(images[-1]))[None]  # float32: see encode_image_codes
            with torch.inference_mode():
                codes = self.model.encode_image_codes(pixels.to(self.model.device))[0].cpu().clone()
            self.cache.put(key, codes)
        return self.processor.with_echo(ids, self.processor.echo_codes(codes))

    def prompt_embeds(self, ids: list[int], images: list[InputImage]) -> torch.Tensor:
        """[len(ids), hidden]: token embeddings, the image placeholder rows replaced by the images
        in order, image codes (a source echo) embedded as drawn codes are."""
        features = self.features(images)
        with torch.inference_mode():
            tokens = torch.tensor(ids)
            embeds = self.model.input_embeddings(tokens.to(self.model.device)).cpu()  # the engine process takes host tensors
            mask = tokens == self.processor.tokenizer.special.image
            rows = torch.cat(features).to(embeds.dtype)
            if int(mask.sum()) != rows.shape[0]:
                raise RuntimeError(f"{int(mask.sum())} image placeholder tokens for {rows.shape[0]} image rows")
            embeds[mask] = rows
        return embeds

