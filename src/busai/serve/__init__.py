"""The web page and JSON API served by ``busai serve`` (see :mod:`busai.serve.app`)."""

from busai.serve.app import NOTICE, create_app

__all__ = ["NOTICE", "create_app"]
