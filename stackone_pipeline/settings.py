"""Configuration from the environment, read in one place, with clear errors."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


class SettingsError(ValueError):
    pass


def env_int(env, name: str, default: int, lo: int = 1, hi: int | None = None) -> int:
    """An integer variable in [lo, hi], or `default` when unset; a clear error otherwise."""
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < lo or (hi is not None and value > hi):
        bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise SettingsError(f"{name} must be {bounds}, got {value}")
    return value


def env_bool(env, name: str, default: bool) -> bool:
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
            rate_limit_per_minute=env_int(env, "STACKONE_RATE_LIMIT_PER_MINUTE", cls.rate_limit_per_minute),
            page_size=env_int(env, "STACKONE_PAGE_SIZE", cls.page_size),
            concurrency=env_int(env, "STACKONE_CONCURRENCY", cls.concurrency),
            keep_bodies=env_bool(env, "STACKONE_KEEP_BODIES", False),
            redact_names=tuple(n.strip() for n in env.get("STACKONE_REDACT_NAMES", "").split(",") if n.strip()),
        )
