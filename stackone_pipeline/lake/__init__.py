"""The Parquet lake: one file per dataset and UTC hour, published atomically (see lake.py)."""

from .lake import FILE_NAME, HourNotIngested, HourWriter, Lake, write_atomically

__all__ = ["FILE_NAME", "HourNotIngested", "HourWriter", "Lake", "write_atomically"]
