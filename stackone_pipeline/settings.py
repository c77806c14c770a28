"""Configuration from the environment, read in one place, with clear errors."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


class SettingsError(ValueError):
    pass


def _int(env: dict, name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {value}")
    return value


def _bool(env: dict, name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class Settings:
    base_url: str = "https://api.stackone.com"
    data_dir: str = "./data"
    rate_limit_per_minute: int = 1000
    page_size: int = 100
    concurrency: int = 4  # hours fetched at once inside one run (all share the rate limit)
    keep_bodies: bool = False
    redact_names: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        return cls(
            base_url=env.get("STACKONE_BASE_URL") or cls.base_url,
            data_dir=env.get("STACKONE_DATA_DIR") or cls.data_dir,
            rate_limit_per_minute=_int(env, "STACKONE_RATE_LIMIT_PER_MINUTE", cls.rate_limit_per_minute),
            page_size=_int(env, "STACKONE_PAGE_SIZE", cls.page_size),
            concurrency=_int(env, "STACKONE_CONCURRENCY", cls.concurrency),
            keep_bodies=_bool(env, "STACKONE_KEEP_BODIES", False),
            redact_names=tuple(n.strip() for n in env.get("STACKONE_REDACT_NAMES", "").split(",") if n.strip()),
        )
