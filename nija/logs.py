"""Logging: structlog, one event per line with key=value context.

A console renderer on a terminal, JSON lines otherwise (Railway/Render collect stdout). Secrets never reach a
log line: values under secret-looking keys are masked as a last line of defence, and credentials are SecretStr.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SECRET_KEYS = ("secret", "api_sign", "password", "token", "otp")


def _add_logger_name(logger, _name, event_dict):
    name = getattr(logger, "name", None)
    if name:
        event_dict.setdefault("logger", name)
    return event_dict


def _mask_secrets(_logger, _name, event_dict):
    for key in list(event_dict):
        lowered = key.lower()
        if any(word in lowered for word in _SECRET_KEYS):
            event_dict[key] = "**********"
    return event_dict


class _StreamLogger:
    """Writes each line to whatever `sys.stdout` (or `sys.stderr`) is at that moment (a test runner may swap it
    after set-up)."""

    __slots__ = ("name",)
    stream_name = "stdout"

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        stream = getattr(sys, self.stream_name)
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = failure = err = msg


def setting_problems(environ=None) -> list[str]:
    """What is wrong with NIJA_LOG_LEVEL and NIJA_LOG_FORMAT (a run carries on with the defaults; `nija check`
    reports them)."""
    environ = os.environ if environ is None else environ
    problems = []
    level_name = (environ.get("NIJA_LOG_LEVEL") or "INFO").strip().upper()
    if level_name not in _LEVELS:
        problems.append(f"NIJA_LOG_LEVEL={level_name!r} is not a level: use one of {', '.join(_LEVELS)}")
    wanted = (environ.get("NIJA_LOG_FORMAT") or "").strip().lower()
    if wanted not in ("", "json", "console"):
        problems.append(f"NIJA_LOG_FORMAT={wanted!r} is not a format: use json or console")
    return problems


def configure(level: str | None = None, *, json_lines: bool | None = None, to_stderr: bool = False) -> None:
    """Set up structlog once for the process. NIJA_LOG_LEVEL and NIJA_LOG_FORMAT (console|json) override; call it
    after `load_settings`, which puts `.env` into the environment. `to_stderr` keeps a command's report on stdout
    apart from its log lines."""
    level_name = (level or os.environ.get("NIJA_LOG_LEVEL") or "INFO").strip().upper()
    if level_name not in _LEVELS:
        print(f"NIJA_LOG_LEVEL={level_name!r} is not a level: use one of {', '.join(_LEVELS)}; using INFO",
              file=sys.stderr)
        level_name = "INFO"
    log_level = getattr(logging, level_name)
    if json_lines is None:
        wanted = os.environ.get("NIJA_LOG_FORMAT", "").strip().lower()
        if wanted not in ("", "json", "console"):
            print(f"NIJA_LOG_FORMAT={wanted!r} is not a format: use json or console; choosing by terminal",
                  file=sys.stderr)
            wanted = ""
        stream = sys.stderr if to_stderr else sys.stdout
        json_lines = wanted == "json" or (wanted != "console" and not stream.isatty())
    _StreamLogger.stream_name = "stderr" if to_stderr else "stdout"
    renderer = structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(log_level),
        logger_factory=_StreamLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str, **context):
    """A logger whose lines carry `logger=name`; lazy, so module-level loggers follow a later `configure()`."""
    return structlog.get_logger(name, **context)
