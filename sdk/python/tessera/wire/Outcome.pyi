from __future__ import annotations

import flatbuffers
import numpy as np

import typing
from typing import cast

uoffset: typing.TypeAlias = flatbuffers.number_types.UOffsetTFlags.py_type

class Outcome(object):
  NONE = cast(int, ...)
  Error = cast(int, ...)
  HelloResult = cast(int, ...)
  PingResult = cast(int, ...)
  GetResult = cast(int, ...)
  WriteResult = cast(int, ...)
  ScanResult = cast(int, ...)
  StatsResult = cast(int, ...)
  TopologyResult = cast(int, ...)
  TxnResult = cast(int, ...)

