"""CLI sub-commands; each module exposes ``register(subparsers)`` and stays a thin layer over the library."""
