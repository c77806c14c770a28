"""The lake's home when it is not this machine's disk: an object store (`STACKONE_LAKE_URL`,
e.g. `s3://bucket/prefix`), reached through fsspec (s3fs for S3; gcsfs or adlfs install the same
way for other stores).

An object store has no rename, but a single PUT (and a multipart upload, on completion) becomes
visible whole or not at all, so an hour is published by uploading its finished file straight to
its final key: a reader never sees part of an hour. The same filesystem object lets DuckDB read
the lake (`register`): DuckDB's own S3 extension is a download these machines cannot make, and
fsspec's is a package from PyPI.

Credentials and the endpoint come from the environment, as every AWS SDK reads them
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, or an instance
role); they are never part of the URL, so the URL is safe to log.
"""

from __future__ import annotations

import os
import uuid
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

LOCAL_SCHEMES = ("", "file", "local")


def is_remote_url(url: str | None) -> bool:
    """Whether `url` names a lake that is not a path on this machine."""
    return bool(url) and urlsplit(url).scheme not in LOCAL_SCHEMES


def local_path(url: str) -> Path:
    """The directory of a `file://` (or plain path) lake URL."""
    parts = urlsplit(url)
    return Path(parts.path if parts.scheme == "file" else url)


class LakeStoreError(OSError):
    """The object store refused or could not be reached; says which URL and why."""


class ObjectStore:
    """One prefix of an object store: keys are paths relative to `url`."""

    def __init__(self, url: str):
        if not is_remote_url(url):
            raise ValueError(f"not an object store URL: {url!r}")
        self.url = url.rstrip("/")
        self.scheme = urlsplit(self.url).scheme

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    @cached_property
    def _fs_and_base(self):
        import fsspec  # with s3fs for s3:// (the deploy extra)

        try:
            fs, base = fsspec.core.url_to_fs(self.url)
        except ImportError as exc:
            raise LakeStoreError(
                f"STACKONE_LAKE_URL={self.url} needs the filesystem package for {self.scheme}:// "
                f"(pip install 'stackone_pipeline[deploy]'): {exc}"
            ) from None
        return fs, base.rstrip("/")

    @property
    def fs(self):
        return self._fs_and_base[0]

    def key(self, rel: str) -> str:
        return f"{self._fs_and_base[1]}/{rel}" if rel else self._fs_and_base[1]

    def uri(self, rel: str) -> str:
        """`rel` as a URL DuckDB and other engines read (`s3://bucket/prefix/rel`)."""
        return f"{self.url}/{rel}"

    # -- reads -------------------------------------------------------------------------------
    def etag(self, rel: str) -> str | None:
        """The object's version tag (ETag, else size and time), or None when it does not exist."""
        try:
            info = self._call(self.fs.info, self.key(rel), refresh=True)
        except FileNotFoundError:
            return None
        tag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
        return str(tag) if tag else f"{info.get('size')}-{info.get('LastModified') or info.get('mtime')}"

    def exists(self, rel: str) -> bool:
        return self.etag(rel) is not None

    def children(self, rel: str = "") -> list[str]:
        """Names directly under `rel` (folders and files), fresh from the store."""
        try:
            entries = self._call(self.fs.ls, self.key(rel), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def files(self, rel: str) -> list[str]:
        """Every object under `rel`, as paths relative to `rel` (one listing: pages of a thousand keys)."""
        base = self.key(rel).rstrip("/") + "/"
        try:
            found = self._call(self.fs.find, base)
        except FileNotFoundError:
            return []
        self.fs.invalidate_cache(base)
        return sorted(f[len(base) :] for f in found if f.startswith(base))

    def download(self, rel: str, dest: Path) -> None:
        """Copy the object to `dest` whole: written under a temporary name, then renamed."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{dest.name}.partial")
        try:
            self._call(self.fs.get_file, self.key(rel), str(tmp))
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    # -- writes ------------------------------------------------------------------------------
    def upload(self, src: Path, rel: str) -> str:
        """Publish `src` as `rel` in one atomic PUT (or multipart upload); its new tag."""
        try:
            self._call(self.fs.put_file, str(src), self.key(rel))
        except FileNotFoundError as exc:  # a write finds no object missing: the bucket is
            bucket = urlsplit(self.url).netloc
            raise LakeStoreError(
                f"the lake's object store {self.url} failed: there is no bucket {bucket!r} "
                f"(create it, or correct STACKONE_LAKE_URL): {exc}"
            ) from exc
        self.fs.invalidate_cache(self.key(rel))
        return self.etag(rel) or ""

    def delete(self, rel: str) -> None:
        try:
            self._call(self.fs.rm_file, self.key(rel))
        except FileNotFoundError:
            pass

    def register(self, con) -> None:
        """Let a DuckDB connection read this store's URLs."""
        con.register_filesystem(self.fs)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except _store_errors() as exc:
            raise LakeStoreError(f"the lake's object store {self.url} failed: {exc}") from exc


def _store_errors() -> tuple[type[BaseException], ...]:
    """What a store's client raises for a store that fails: OSError (s3fs translates most S3
    answers to it), and botocore's own errors, which it passes through (an endpoint that cannot
    be reached, credentials that cannot be found)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return (OSError,)
    return (OSError, BotoCoreError, ClientError)
