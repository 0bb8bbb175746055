"""What a QUIC engine cannot do, as an exception the session layer can name."""

from __future__ import annotations

__all__ = ["EngineLimitation"]


class EngineLimitation(NotImplementedError):
    """The chosen QUIC engine has no way to do this.

    The message names the engine, the missing capability and what to use instead,
    so that it can be shown as is when a session is constructed with an option the
    engine cannot honour.
    """
