"""The one error type the collector's stages raise towards the API.

Each carries the gRPC status code the API answers with, a message for the
caller (naming the bad field or the expected value) and, for upload
rejections, a short ``reason`` used as a metric label.
"""

from __future__ import annotations

import grpc

__all__ = ["CollectorError"]


class CollectorError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or code.name.lower()

    def __repr__(self) -> str:
        return f"CollectorError({self.code.name}, {self.message!r})"
