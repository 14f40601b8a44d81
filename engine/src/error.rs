//! The engine's error type. Operating errors (disk, corruption, limits) are
//! values of [`Error`]; programmer errors are assertions.

use std::path::PathBuf;

/// Everything that can go wrong inside the engine that is not a bug.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed. `op` names the call, `path` the file. The OS
    /// error is part of the message (clients get it), so it is not also
    /// the error's `source()`: a printer of the whole chain (`{:#}`) said
    /// it twice.
    #[error("{op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// Bytes on disk failed their checksum or do not parse. Never served.
    #[error("corruption in {path} at offset {offset}: {detail}")]
    Corruption {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    /// A key or value is larger than the configured limit.
    #[error("{what} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        len: usize,
        limit: usize,
    },
    /// A read asked for a timestamp that compaction may already have collapsed.
    #[error(
        "timestamp {requested} is older than the retention watermark {watermark} (by {} ms): \
         reads reach back only the retention window (retention_ms; the server's --retention-ms)",
        crate::clock::ms_of_ts(*watermark).saturating_sub(crate::clock::ms_of_ts(*requested))
    )]
    TimestampTooOld { requested: u64, watermark: u64 },
    /// A read at a timestamp too far ahead of this shard's clock.
    #[error("timestamp {requested} is ahead of the shard clock ({now})")]
    TimestampInFuture { requested: u64, now: u64 },
    /// Waited longer than `txn_wait_ms` for an older transaction.
    #[error("gave up after {waited_ms} ms waiting for transaction {holder}")]
    WaitTimeout { holder: u64, waited_ms: u64 },
    /// A write could not proceed because background flushing keeps
    /// failing, or compaction does with level 0 at its stop.
    #[error("writes stalled: {0}")]
    Stalled(String),
    /// The engine was closed.
    #[error("engine is closed")]
    Closed,
    /// Options were invalid.
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            error,
        }
    }

    pub(crate) fn corruption(
        path: impl Into<PathBuf>,
        offset: u64,
        detail: impl Into<String>,
    ) -> Self {
        Error::Corruption {
            path: path.into(),
            offset,
            detail: detail.into(),
        }
    }

    /// True when the error is a checksum or format failure.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. })
    }

    /// The OS error number behind an I/O error, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { error, .. } => error.raw_os_error(),
            _ => None,
        }
    }

    /// A copy good enough to hand to every writer of a failed group.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Io { op, path, error } => Error::Io {
                op,
                path: path.clone(),
                error: match error.raw_os_error() {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::new(error.kind(), error.to_string()),
                },
            },
            Error::Corruption {
                path,
                offset,
                detail,
            } => Error::Corruption {
                path: path.clone(),
                offset: *offset,
                detail: detail.clone(),
            },
            Error::TooLarge { what, len, limit } => Error::TooLarge {
                what,
                len: *len,
                limit: *limit,
            },
            Error::TimestampTooOld {
                requested,
                watermark,
            } => Error::TimestampTooOld {
                requested: *requested,
                watermark: *watermark,
            },
            Error::TimestampInFuture { requested, now } => Error::TimestampInFuture {
                requested: *requested,
                now: *now,
            },
            Error::WaitTimeout { holder, waited_ms } => Error::WaitTimeout {
                holder: *holder,
                waited_ms: *waited_ms,
            },
            Error::Stalled(s) => Error::Stalled(s.clone()),
            Error::Closed => Error::Closed,
            Error::InvalidOption(s) => Error::InvalidOption(s.clone()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
