"""An S3-compatible object store on 127.0.0.1 for the deployment tests: moto in server mode (it
speaks the S3 REST API over HTTP), in its own process, one fresh bucket per test."""

from __future__ import annotations

import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3

from .prometheus_server import free_port
from .server_process import server_process

# moto accepts any credentials; the pipeline reads them from the usual AWS variables
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    endpoint: str

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        )

    def create_bucket(self, prefix: str = "lake") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict:
        """What a pipeline process needs to reach this store (AWS_ENDPOINT_URL: every AWS SDK and
        s3fs honour it)."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@contextmanager
def running_s3(workdir: Path):
    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    url = f"http://127.0.0.1:{port}"
    with server_process("moto", cmd, url, workdir / "moto.log", ready_path="/moto-api/"):
        yield S3Server(url)
