"""`busai serve`: the drop-a-scan web page and its JSON API, on localhost by default."""

from __future__ import annotations

import argparse
import contextlib
import sys

from busai.config import BACKENDS, DEVICES, SERVE_HOST, SERVE_PORT

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def register(sub) -> None:
    from busai.serve.limits import MAX_MEGAPIXELS, MAX_QUEUE, MAX_UPLOAD_MB

    p = sub.add_parser(
        "serve",
        help="web page: drop a scan, see the lesion, class probabilities and measurements",
        description="Start the web page and its API (POST /api/predict). Binds to 127.0.0.1 unless --host says otherwise. "
        "Research software, not a medical device. Limits and security headers: docs/serve.md.",
    )
    p.add_argument("--host", default=SERVE_HOST, help=f"address to bind (default {SERVE_HOST}: this computer only)")
    p.add_argument("--port", type=int, default=SERVE_PORT, help=f"port (default {SERVE_PORT})")
    p.add_argument("--seg", default="release", metavar="MODEL", help="segmentation model: release (default), a run folder, an .onnx file, or none")
    p.add_argument("--cls", default="release", metavar="MODEL", help="classification model: release (default), a run folder, an .onnx file, or none")
    p.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="auto: PyTorch (the segmenter's model.onnx where ONNX Runtime measured faster here), else ONNX Runtime; onnx: ONNX Runtime (no Grad-CAM)",
    )
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto (default): the GPU when one is visible, else the CPU")
    p.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, help=f"largest accepted upload in MB (default {MAX_UPLOAD_MB:g})")
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=MAX_MEGAPIXELS,
        help=f"largest accepted image, width x height in millions of pixels, read from its header before decoding (default {MAX_MEGAPIXELS:g})",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=MAX_QUEUE,
        help=f"uploads held at once, one running and the rest waiting; more are answered 503 with Retry-After (default {MAX_QUEUE})",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header is NAME (repeatable; '*' answers any). "
        "127.0.0.1, localhost, [::1] and --host are always allowed; others are refused against DNS rebinding",
    )
    p.add_argument("--openapi", action="store_true", help="publish the API schema at /openapi.json (off by default)")
    p.add_argument("--quiet", action="store_true", help="no progress display while the models load (none either when stderr is not a terminal)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from busai.errors import ConfigError

    if not 1 <= args.port <= 65535:  # checked before the models load: uvicorn would fail late, with a traceback
        raise ConfigError(f"--port {args.port}: must be from 1 to 65535 (default {SERVE_PORT})")
    import uvicorn

    from busai.serve import NOTICE, create_app

    from rich.console import Console

    console = Console(stderr=True)
    loading = (
        contextlib.nullcontext() if args.quiet or not console.is_terminal else console.status(f"busai: loading models (seg: {args.seg}, cls: {args.cls}) ...")
    )
    with loading:
        app = create_app(
            args.seg,
            args.cls,
            backend=args.backend,
            max_upload_mb=args.max_upload_mb,
            max_megapixels=args.max_megapixels,
            max_queue=args.max_queue,
            allow_hosts=[args.host, *args.allow_host],
            openapi=args.openapi,
            device=args.device,
        )
    if args.host not in LOOPBACK:
        print(
            f"warning: --host {args.host} makes the page reachable from other computers; uploads are not authenticated. "
            "Requests are answered only for the Host names 127.0.0.1, localhost, --host and each --allow-host NAME",
            file=sys.stderr,
        )
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"busai: http://{shown}:{args.port}/  ({NOTICE})", file=sys.stderr)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its shutdown, which already removed the temporary folder
        pass
    print("busai: server stopped", file=sys.stderr)
    return 0
