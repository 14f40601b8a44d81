from __future__ import annotations

import flatbuffers
import numpy as np

import typing
from typing import cast

uoffset: typing.TypeAlias = flatbuffers.number_types.UOffsetTFlags.py_type

class Op(object):
  NONE = cast(int, ...)
  Hello = cast(int, ...)
  Ping = cast(int, ...)
  Get = cast(int, ...)
  Put = cast(int, ...)
  Delete = cast(int, ...)
  Scan = cast(int, ...)
  Batch = cast(int, ...)
  Stats = cast(int, ...)
  Topology = cast(int, ...)
  ReadAt = cast(int, ...)
  Txn = cast(int, ...)

