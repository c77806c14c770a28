"""HTTP with one retry policy for the StackOne client, the sinks and the notifier.

retry.py      RetryPolicy (attempts, deadline, backoff with equal jitter) and Retry-After parsing
transport.py  Transport: an httpx.Client plus the retry loop; callers classify answers (Verdict)
"""

from .retry import RetryPolicy, retry_after_seconds
from .transport import Action, Classifier, Sent, Transport, Verdict, gzip_bytes, retryable_statuses

__all__ = [
    "Action",
    "Classifier",
    "RetryPolicy",
    "Sent",
    "Transport",
    "Verdict",
    "gzip_bytes",
    "retry_after_seconds",
    "retryable_statuses",
]
