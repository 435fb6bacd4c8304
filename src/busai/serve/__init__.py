"""The web page and JSON API served by ``busai serve`` (see :mod:`busai.serve.app`)."""

from busai.extras import require

require("serve")  # one clear line instead of an ImportError from fastapi

from busai.serve.app import NOTICE, create_app  # noqa: E402

__all__ = ["NOTICE", "create_app"]
