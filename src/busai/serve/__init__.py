"""The web page and JSON API served by ``busai serve`` (see :mod:`busai.serve.app`)."""

__all__ = ["NOTICE", "create_app"]


def __getattr__(name: str):
    # Lazy, so that `busai --help` can read busai.serve.limits without importing FastAPI and the models.
    if name in __all__:
        from busai.extras import require

        require("serve")  # one clear line instead of an ImportError from fastapi
        from busai.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'busai.serve' has no attribute {name!r}")
