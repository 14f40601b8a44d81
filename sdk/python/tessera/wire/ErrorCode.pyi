from __future__ import annotations

import flatbuffers
import numpy as np

import typing
from typing import cast

uoffset: typing.TypeAlias = flatbuffers.number_types.UOffsetTFlags.py_type

class ErrorCode(object):
  Internal = cast(int, ...)
  BadFrame = cast(int, ...)
  UnknownOperation = cast(int, ...)
  UnsupportedVersion = cast(int, ...)
  KeyTooLarge = cast(int, ...)
  ValueTooLarge = cast(int, ...)
  BatchTooLarge = cast(int, ...)
  InvalidArgument = cast(int, ...)
  CrossShardBatch = cast(int, ...)
  Storage = cast(int, ...)
  Corruption = cast(int, ...)
  Unavailable = cast(int, ...)
  TimestampTooOld = cast(int, ...)
  Conflict = cast(int, ...)
  Unauthenticated = cast(int, ...)

