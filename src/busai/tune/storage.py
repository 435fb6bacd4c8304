"""Optuna storage: a SQLite file in the study folder by default, any RDB URL (PostgreSQL) for several machines."""

from __future__ import annotations

import random
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc

from busai.errors import ConfigError


def default_storage(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    # The heartbeat marks a trial whose worker died as FAIL, so a re-run resumes cleanly.
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for _ in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat: experimental since 2.9
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=30, grace_period=120)
        except sqlalchemy.exc.DatabaseError as exc:
            # Workers starting together on an empty database race to create its tables (optuna#1092):
            # the loser finds them on a retry. A server that is down fails every attempt.
            error = exc
            time.sleep(0.2 + random.random() * 0.5)
        except Exception as exc:  # bad URL, missing driver
            error = exc
            break
    raise ConfigError(
        f"--storage {redact(url)}: cannot open ({type(error).__name__}: {str(error).splitlines()[0]}); "
        "check the URL, that the server runs and that its driver (e.g. psycopg2-binary) is installed"
    )


def redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url
