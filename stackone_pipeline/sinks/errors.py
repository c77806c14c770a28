"""The sinks' own error, importable without loading any sink's machinery."""


class DeliveryError(RuntimeError):
    """An hour could not be delivered to a sink: the message says why and what happens next."""
