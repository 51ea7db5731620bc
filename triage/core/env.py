"""Typed readers for environment settings that fail loudly on bad values.

A secret may also come from a file named by ``<NAME>_FILE`` (Docker and Kubernetes secrets).
"""

from __future__ import annotations

import os
from pathlib import Path


class SettingError(RuntimeError):
    """A setting in the environment is missing or malformed."""


def env_str(name: str, default: str | None = None, *, required: bool = False) -> str | None:
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as err:
            raise SettingError(f"{name}_FILE={file_name!r} cannot be read: {err.strerror}") from err
    value = os.environ.get(name)
    if value is None or value == "":
        if required:
            raise SettingError(f"{name} must be set")
        return default
    return value


def env_bool(name: str, default: bool = False) -> bool:
    value = env_str(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingError(f"{name}={value!r} is not a boolean (use 1/0, true/false, yes/no)")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = env_str(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError as err:
        raise SettingError(f"{name}={value!r} is not an integer") from err
    if minimum is not None and number < minimum:
        raise SettingError(f"{name}={number} must be at least {minimum}")
    return number


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    value = env_str(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError as err:
        raise SettingError(f"{name}={value!r} is not a number") from err
    if minimum is not None and number < minimum:
        raise SettingError(f"{name}={number} must be at least {minimum}")
    return number


def env_list(name: str, default: str) -> list[str]:
    value = env_str(name, default) or ""
    return [item.strip() for item in value.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(name, default) or default
    if value not in choices:
        raise SettingError(f"{name}={value!r} must be one of {', '.join(choices)}")
    return value


def env_device(name: str, default: str = "cpu") -> str:
    value = (env_str(name, default) or default).strip()
    if value == "cpu" or value == "cuda":
        return value
    if value.startswith("cuda:") and value[5:].isdigit():
        return value
    raise SettingError(f"{name}={value!r} must be cpu, cuda or cuda:N")
