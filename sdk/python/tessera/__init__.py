"""Tessera's Python SDK: a blocking, pipelined, shard-aware client for the
Tessera key-value server, built on the code flatc generates from the one
schema every SDK shares (``protocol/schema/tessera.fbs``).

::

    import tessera

    with tessera.Client("127.0.0.1:7878") as db:
        ts = db.put("user:1", "ada")
        assert db.get("user:1") == b"ada"
        outcome = db.txn_with_retry(
            tessera.Txn().equals("a", "100").put("a", "90").put("b", "10")
        )

``tessera.aio.Client`` is the same client for asyncio.
"""

from .client import (
    PROTOCOL_VERSION,
    Batch,
    Client,
    Connection,
    ConnectionClosed,
    Delete,
    DeleteOp,
    ErrorCode,
    Expiring,
    Get,
    Hello,
    HelloInfo,
    Metric,
    Ping,
    ProtocolError,
    Put,
    PutOp,
    ReadAt,
    ReadValue,
    RequestTooLarge,
    Scan,
    ScanPage,
    ServerError,
    Stats,
    TesseraError,
    Timeout,
    Topology,
    TopologyInfo,
    Txn,
    TxnOutcome,
    WriteOp,
)

__all__ = [
    "PROTOCOL_VERSION",
    "Batch",
    "Client",
    "Connection",
    "ConnectionClosed",
    "Delete",
    "DeleteOp",
    "ErrorCode",
    "Expiring",
    "Get",
    "Hello",
    "HelloInfo",
    "Metric",
    "Ping",
    "ProtocolError",
    "Put",
    "PutOp",
    "ReadAt",
    "ReadValue",
    "RequestTooLarge",
    "Scan",
    "ScanPage",
    "ServerError",
    "Stats",
    "TesseraError",
    "Timeout",
    "Topology",
    "TopologyInfo",
    "Txn",
    "TxnOutcome",
    "WriteOp",
]
