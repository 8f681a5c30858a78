"""The `imagemini` command.

    imagemini serve [--model DIR] [--host H] [--port P]     the OpenAI-compatible server
    imagemini serve --replicas N [--ray-address ADDR]        ... as N Ray Serve replicas (api/replicas.py)
    imagemini keys create|list|show|disable|delete          API keys of the store (store/commands.py)
    imagemini generate "prompt" [--model DIR] [...]          one completion, printed
    imagemini generate "draw ..." --out picture.png          ... that starts with an image, saved
    imagemini bench NAME [...]                               benchmarks (BENCHES below; the `test` extra)

Benchmark and training modules are imported only when their command runs, so `pip install
imagemini` (no extras) serves and generates.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from imagemini.logs import LOG_FORMATS, log_format_from_env
from imagemini.api.replicas import add_replica_arguments
from imagemini.store.commands import add_keys_command, add_store_arguments

BUNDLED_MODEL = Path(__file__).parent / "models" / "bundled"

log = logging.getLogger("imagemini")


def default_model_dir() -> Path:
    """The bundled checkpoint; until one is trained, the random test fixture (loudly)."""
    if (BUNDLED_MODEL / "model.safetensors").exists():
        return BUNDLED_MODEL
    from imagemini.models import random_fixture

    log.warning(
        "no bundled checkpoint at %s yet: serving the RANDOM TEST FIXTURE (answers are noise)", BUNDLED_MODEL
    )
    return random_fixture.cached_small()


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None, help="Janus checkpoint directory (default: bundled)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--device", default="cpu",
                   help="where the model runs: cpu, cuda or cuda:N (weights, KV cache, sampling and the image encoder/decoder)")
    p.add_argument("--max-num-seqs", type=int, default=32, help="sequences decoded together")
    p.add_argument("--kv-budget-tokens", type=int, default=65536, help="KV cache size in tokens, all sequences")
    p.add_argument("--prefix-cache-tokens", type=int, default=16384,
                   help="prompt prefixes kept for reuse, in tokens, beside the KV budget (0: off)")


def _engine_config(args: argparse.Namespace):
    from imagemini.engine.engine import EngineConfig
    from imagemini.engine.scheduler import SchedulerConfig

    return EngineConfig(
        dtype=args.dtype,
        device=args.device,
        kv_budget_tokens=args.kv_budget_tokens,
        prefix_cache_tokens=args.prefix_cache_tokens,
        scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs),
    )


def cmd_serve(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from imagemini.api.replicas import check_replica_arguments, forward_replica_logs, serve_replicas
    from imagemini.api.server import create_app, serve
    from imagemini.api.settings import ServerSettings

    from imagemini.logs import configure_logging
    from imagemini.store.clock import clock_from_env
    from imagemini.store.commands import check_serving_rule, store_url
    from imagemini.store.store import Store

    configure_logging(args.log_format)  # before the engine process starts: it follows the choice
    url = store_url(args, create=False)
    if args.replicas is not None:
        forward_replica_logs(args.log_format)
    check_replica_arguments(args, url)
    check_serving_rule(args.host, args.port, url, args.api_key, args.no_auth)
    settings = ServerSettings.from_env()
    if args.allow_image_urls:
        settings = replace(settings, allow_image_urls=True)
    if args.allow_private_urls:
        settings = replace(settings, allow_private_urls=True)
    if args.replicas is not None:
        serve_replicas(args, settings, url)
        return
    model_dir = args.model or default_model_dir()
    app = create_app(model_dir, _engine_config(args), max_pending=args.max_pending, api_keys=args.api_key,
                     settings=settings, engine_threads=args.engine_threads,
                     store=Store(url, clock_from_env()) if url else None)
    serve(app, args.host, args.port, args.log_format)


def cmd_generate(args: argparse.Namespace) -> None:
    from imagemini.engine.engine import Engine
    from imagemini.engine.params import SamplingParams

    model_dir = args.model or default_model_dir()
    engine = Engine.from_checkpoint(model_dir, _engine_config(args))
    tok = engine.tokenizer
    prompt = tok.encode(tok.render_chat([{"role": "user", "content": args.prompt}], add_generation_prompt=True))
    if args.out is None:
        temperature = 0.0 if args.temperature is None else args.temperature
        params = SamplingParams(max_tokens=args.max_tokens, temperature=temperature, seed=args.seed)
        print(engine.generate([prompt], params)[0]["text"])
        return
    _generate_image(engine, model_dir, prompt, args)


def _generate_image(engine, model_dir: Path, prompt: list[int], args: argparse.Namespace) -> None:
    """As `modalities: ["image"]` on the server: the answer starts with an image; each image the
    answer holds is saved (OUT, then OUT-2.png, ...); text after it is printed."""
    from imagemini.engine.params import SamplingParams
    from imagemini.models.image_output import ImageOutput, ImageWriter

    image = ImageOutput.from_dir(model_dir, engine.tokenizer, engine.model.cfg)
    if not image.enabled:
        raise ValueError("this checkpoint cannot generate images (its tokenizer has no begin-of-image token)")
    params = SamplingParams(
        max_tokens=max(args.max_tokens, image.num_tokens + 1),
        temperature=args.temperature if args.temperature is not None else (image.temperature if image.temperature is not None else 1.0),
        top_p=image.top_p if image.top_p is not None else 1.0,
        seed=args.seed,
        image_output=True,
        guidance_scale=args.guidance_scale if args.guidance_scale is not None else image.guidance_scale,
        banned_token_ids=image.banned_ids(drawing=True),
    )
    result = engine.generate([prompt + list(image.start_ids)], params)[0]
    writer = ImageWriter(engine.model)
    out: Path = args.out
    for i, codes in enumerate(result["images"]):
        path = out if i == 0 else out.with_name(f"{out.stem}-{i + 1}{out.suffix or '.png'}")
        path.write_bytes(writer.png(codes))
        print(f"saved {path} ({image.resolution}x{image.resolution})", file=sys.stderr)
    if not result["images"]:
        print("imagemini: no image was generated", file=sys.stderr)
    if result["text"].strip():
        print(result["text"])


def cmd_train(args: argparse.Namespace) -> None:
    from imagemini.train import lm, vq

    runs = args.runs
    if args.stage in ("vq", "all"):
        vq.train_vq(runs / "vq", minutes=args.vq_minutes, seed=args.seed)
        vq.tune_decoder(runs / "vq", minutes=args.decoder_minutes, seed=args.seed)
    if args.stage in ("lm", "all"):
        cfg = lm.TrainConfig(minutes=args.lm_minutes, seed=args.seed, vision_minutes=args.vision_minutes, device=args.device)
        print(lm.train(runs / "lm", runs / "vq", cfg))


def cmd_eval(args: argparse.Namespace) -> None:
    from imagemini.train.evaluate import evaluate

    report = evaluate(args.model or default_model_dir(), args.n, args.out, seed=args.seed, split=args.split)
    for key, value in report["scores"].items():
        if not key.startswith("task:"):
            print(f"{key:>22}: {value}")


# name -> help. imagemini/bench/NAME.py owns its options (`add_arguments`) and is imported only
# when its command is chosen: benchmarks need the `test` extra (httpx, transformers).
BENCHES = {
    "text": "decode tokens/s and time to first token: our engine vs transformers' generate vs the weight-pass ceiling",
    "http": "tokens/s streamed through the HTTP server vs the engine alone",
    "structured": "tokens/s with and without a JSON schema, and the grammar mask's cost",
    "images": "encoder cache: hit vs miss latency for a resent image",
    "prefix": "prefix cache: time to first token of a chat's second turn, cold vs cached",
    "draw": "images/s drawn: our engine vs transformers' generate (image mode) vs the weight-pass ceiling",
    "picture": "latency of a chat with a picture through the server (new vs resent)",
    "soak": "minutes of mixed traffic through the server: errors, RSS, KV use, latency per kind",
    "train": "training steps/s and tokens/s of the recipe's stage 2 on a device",
    "profile": "torch profiler tables of decode steps: where a step's time goes, kernel launches, host reads",
}


def _bench_module(name: str):
    import importlib

    try:
        return importlib.import_module(f"imagemini.bench.{name}")
    except ModuleNotFoundError as exc:
        raise SystemExit(f"imagemini bench {name} needs {exc.name}: pip install 'imagemini[test]'") from None


def cmd_bench(args: argparse.Namespace) -> None:
    _bench_module(args.bench).main(args)


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the OpenAI-compatible HTTP server, its model page and playground")
    _engine_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-pending", type=int, default=256, help="requests in flight before 503")
    p.add_argument("--engine-threads", type=int, default=None,
                   help="torch threads of the engine process (default: one per core but one, left to HTTP)")
    p.add_argument("--api-key", action="append", default=None, help="require this bearer key (repeatable)")
    p.add_argument("--no-auth", action="store_true",
                   help="serve on a non-loopback --host without any key (refused otherwise); keys in the store still apply")
    add_store_arguments(p)
    p.add_argument("--allow-image-urls", action="store_true",
                   help="fetch http(s) image/file URLs of requests (off: only data: URLs); IMAGEMINI_ALLOW_IMAGE_URLS")
    p.add_argument("--allow-private-urls", action="store_true",
                   help="with --allow-image-urls: also loopback/private/link-local addresses; IMAGEMINI_ALLOW_PRIVATE_URLS")
    p.add_argument("--log-format", choices=LOG_FORMATS, default=log_format_from_env(),
                   help="text, or one JSON object per line (access log included); IMAGEMINI_LOG_FORMAT")
    add_replica_arguments(p)
    p.set_defaults(func=cmd_serve)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="print one completion")
    _engine_args(p)
    p.add_argument("prompt")
    p.add_argument("--max-tokens", type=int, default=64, help="with --out: raised to fit one image")
    p.add_argument("--temperature", type=float, default=None,
                   help="default 0 (greedy) for text; with --out the checkpoint's image default")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="draw: the answer starts with an image, saved here as PNG")
    p.add_argument("--guidance-scale", type=float, default=None, help="with --out: classifier-free guidance (1 = none)")
    p.set_defaults(func=cmd_generate)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train the bundled shapes-world model (resumable)")
    p.add_argument("stage", choices=["vq", "lm", "all"], nargs="?", default="all")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="working directory of the stages")
    p.add_argument("--vq-minutes", type=float, default=75.0, help="time budget of the image tokenizer stage")
    p.add_argument("--decoder-minutes", type=float, default=30.0,
                   help="then the VQ decoder alone, on the codes the whole model draws (stage 1b)")
    p.add_argument("--vision-minutes", type=float, default=20.0,
                   help="scene-reading warm-up of the vision encoder alone, at the start of the whole-model stage")
    p.add_argument("--lm-minutes", type=float, default=90.0, help="time budget of the whole-model stage")
    p.add_argument("--device", default="cpu", help="torch device of the whole-model stage (cuda on a GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="score a checkpoint on held-out shapes-world chats")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--n", type=int, default=50, help="examples per task")
    p.add_argument("--out", type=Path, default=Path("docs/eval"))
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--split", choices=("heldout", "train", "wording"), default="heldout",
                   help="held-out chats (the report), training-split ones (what the model has learnt), or held-out wordings (free-worded requests)")
    p.set_defaults(func=cmd_eval)


def _add_bench(sub, argv: list[str]) -> None:
    """Every benchmark is listed; only the one named in `argv` is imported, for its options."""
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    chosen = argv[1] if len(argv) > 1 and argv[0] == "bench" else None
    for name, help_text in BENCHES.items():
        p = bench.add_parser(name, help=help_text)
        if name == chosen:
            _bench_module(name).add_arguments(p)
        p.set_defaults(func=cmd_bench)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog="imagemini", description="Janus models behind the OpenAI API")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_serve, add_keys_command, _add_generate, _add_train, _add_eval):
        add(sub)
    _add_bench(sub, argv)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ValueError as exc:
        print(f"imagemini: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
