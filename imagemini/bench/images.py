"""`imagemini bench images`: what the encoder cache saves when an image is sent again.

    python -m imagemini.bench.images [--model DIR] [--dtype float32] [--side 1024] [--repeats 5]

Measured in this process with the classes the server uses (media.MediaReader, encoder.VisionEncoder):
for one image sent as a base64 data URL, the time from the request's image part to its encoder
output, median of `--repeats` runs:
- miss: base64 decode + hash, image decode, the checkpoint's preprocessing, the vision encoder
  and, on a checkpoint with a source echo (processor.py), the VQ encoding of that echo (a cold
  cache each run);
- hit: base64 decode + hash, then the cache lookups (no decode, no encoder).
"""

from __future__ import annotations

import argparse
import base64
import io
import random
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from imagemini.api.encoder import EncoderCache, VisionEncoder
from imagemini.api.media import ImageRef, MediaReader
from imagemini.api.settings import ServerSettings
from imagemini.engine.engine import Engine, EngineConfig
from imagemini.models import random_fixture
from imagemini.models.processor import Processor


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: random fixture, small size)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--side", type=int, default=1024, help="the test picture is side x 3/4 side pixels (JPEG)")
    p.add_argument("--repeats", type=int, default=5)


def picture(side: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    small = Image.frombytes("RGB", (32, 24), bytes(rng.randrange(256) for _ in range(32 * 24 * 3)))
    buffer = io.BytesIO()
    small.resize((side, side * 3 // 4), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()  # not set_grad_enabled(False): a caller in the same process keeps its own mode
def main(args: argparse.Namespace | None = None) -> dict:
    if args is None:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        add_arguments(parser)
        args = parser.parse_args()
    path = args.model or random_fixture.cached_small()
    engine = Engine.from_checkpoint(path, EngineConfig(dtype=args.dtype))
    processor = Processor.from_dir(path, engine.tokenizer)
    reader = MediaReader(ServerSettings())
    data = picture(args.side)
    ref = ImageRef("data:image/jpeg;base64," + base64.b64encode(data).decode(), None, "bench")

    echo_prompt = [engine.tokenizer.token_id(processor.echo.before_token)] if processor.echo else None

    def run(cache: EncoderCache) -> None:
        vision, image = VisionEncoder(engine.model, processor, cache), reader.image(ref)
        vision.features([image])
        if echo_prompt is not None:
            vision.with_echo(echo_prompt, [image])

    run(EncoderCache(1 << 30))  # warm-up
    misses = [_time(lambda: run(EncoderCache(1 << 30))) for _ in range(args.repeats)]
    warm = EncoderCache(1 << 30)
    run(warm)
    hits = [_time(lambda: run(warm)) for _ in range(args.repeats)]
    miss, hit = statistics.median(misses), statistics.median(hits)
    stats = warm.stats()
    size = Image.open(io.BytesIO(data)).size
    print(f"checkpoint {path}  dtype {args.dtype}  image {size[0]}x{size[1]} JPEG ({len(data)} bytes)  "
          f"encoder input {processor.image_cfg.size}px, {processor.num_image_tokens} tokens  threads {torch.get_num_threads()}"
          f"{'  source echo: VQ-encoded on a miss' if echo_prompt else ''}")
    print(f"encoder cache miss {miss * 1e3:8.2f} ms   hit {hit * 1e3:8.2f} ms   speed-up {miss / hit:6.1f}x   "
          f"(hits {stats['hits']}, misses {stats['misses']}, {stats['bytes']} bytes cached)")
    return {"miss_s": miss, "hit_s": hit, "cache": stats, "echo": echo_prompt is not None}


if __name__ == "__main__":
    main()
