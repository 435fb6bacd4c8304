"""`busai serve`: the drop-a-scan web page and its JSON API, on localhost by default."""

from __future__ import annotations

import argparse
import sys

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="web page: drop a scan, see the lesion, class probabilities and measurements",
        description="Start the web page and its API (POST /api/predict). Binds to 127.0.0.1 unless --host says otherwise. "
        "Research software, not a medical device.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this computer only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--seg", default="release", metavar="MODEL", help="segmentation model: release (default), a run folder, an .onnx file, or none")
    p.add_argument("--cls", default="release", metavar="MODEL", help="classification model: release (default), a run folder, an .onnx file, or none")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"], help="onnx runs the models in ONNX Runtime (no Grad-CAM)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto (default): the GPU when one is visible, else the CPU")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload in MB (default 10)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from busai.serve import NOTICE, create_app

    app = create_app(args.seg, args.cls, backend=args.backend, max_upload_mb=args.max_upload_mb, device=args.device)
    if args.host not in LOOPBACK:
        print(f"warning: --host {args.host} makes the page reachable from other computers; uploads are not authenticated", file=sys.stderr)
    print(f"busai: http://{args.host}:{args.port}/  ({NOTICE})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
