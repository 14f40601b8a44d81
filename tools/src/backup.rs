//! Online backup and restore: `tessera backup FILE` writes every live key
//! and value as of one timestamp, `tessera restore FILE` writes them into
//! a server.
//!
//! A backup is a consistent snapshot across shards: it reads the whole
//! keyspace page by page at one timestamp `T`, so writes and transactions
//! that commit while it runs are either wholly in it (at or below `T`) or
//! wholly out. `T` is taken after every write acknowledged before the
//! backup began: it is the largest of one read-only transaction's
//! timestamp per shard, each from that shard's own clock. Each page read
//! at `T` holds it on every shard for another retention window
//! (`--retention-ms`, 60 s by default), so a backup may run longer than
//! the window; one that pauses for half a window between pages fails with
//! `TimestampTooOld`, and a backup that fails leaves no file.
//!
//! File: a header (magic, `T`, crc32c), one record per row (key length,
//! value length, expiry, key, value, crc32c of all five), and a trailer (a
//! marker, the row count, crc32c). A restore checks the whole file before
//! it writes anything, so a damaged or cut-short backup writes nothing.
//!
//! Keys written with a TTL keep their expiry (Unix milliseconds, 0 for
//! none): a restore writes each with the TTL it has left, and skips those
//! that expired since. Files of the first format (`BACKUP01`, no expiry)
//! still verify and restore.

use bytes::Bytes;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tessera_client::{BatchOp, Client, Request, Response};

/// Milliseconds since the Unix epoch, by this machine's clock.
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

const MAGIC: &[u8; 16] = b"TESSERA\0BACKUP02";
/// The first format: records without an expiry.
const MAGIC_V1: &[u8; 16] = b"TESSERA\0BACKUP01";
/// A key length no key has: the trailer follows.
const TRAILER: u32 = u32::MAX;
/// Rows per scan page (the server's most; its byte budget bounds a page of
/// large values).
pub const PAGE_ROWS: u32 = 10_000;
/// A restore batch: at most this many puts (or the server's most, if
/// fewer)...
const BATCH_OPS: usize = 256;
/// ...and about this many bytes, or half the server's frame limit if that
/// is less (its default is 2 MiB).
const BATCH_BYTES: usize = 512 << 10;
/// Batches in flight per shard during a restore.
const BATCHES_IN_FLIGHT: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] tessera_client::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a whole Tessera backup: {what} at byte {offset}")]
    Damaged {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error(
        "the server already holds data (its first key is {first}): restore into an empty \
         server, or pass --merge to write the backup's keys over it"
    )]
    NotEmpty { first: String },
    #[error("unexpected response {0}")]
    Unexpected(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a backup or a restore did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub rows: u64,
    /// Key and value bytes.
    pub bytes: u64,
    /// The snapshot's timestamp.
    pub ts: u64,
    pub seconds: f64,
    /// Restore: rows not written because their keys expired since the
    /// backup.
    pub expired: u64,
}

/// One row of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRow {
    pub key: Bytes,
    pub value: Bytes,
    /// When the key expires, in Unix milliseconds, if it was written with
    /// a TTL.
    pub expires_at_ms: Option<u64>,
}

/// Rows and key-and-value bytes done so far, told to a progress callback
/// after each page (backup) or batch (restore).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Writes every live key as of a fresh snapshot timestamp to `path`,
/// through `path.tmp` (renamed once complete and synced).
pub fn backup(
    client: &mut Client,
    path: &Path,
    page_rows: u32,
    progress: Progress,
) -> Result<Summary> {
    let started = Instant::now();
    let ts = client.snapshot_ts()?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let io = |source| Error::Io {
        path: tmp.clone(),
        source,
    };
    let result = (|| {
        let file = File::create(&tmp).map_err(io)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&ts.to_le_bytes());
        write_checked(&mut out, &header).map_err(io)?;
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut start = Bytes::new();
        loop {
            let page = client.scan_at(start, None::<Bytes>, page_rows, Some(ts))?;
            for (i, (key, value)) in page.rows.iter().enumerate() {
                let mut record = Vec::with_capacity(16 + key.len() + value.len());
                record.extend_from_slice(&(key.len() as u32).to_le_bytes());
                record.extend_from_slice(&(value.len() as u32).to_le_bytes());
                let expires_at_ms = page.expires_at_ms(i).unwrap_or(0);
                record.extend_from_slice(&expires_at_ms.to_le_bytes());
                record.extend_from_slice(key);
                record.extend_from_slice(value);
                write_checked(&mut out, &record).map_err(io)?;
                rows += 1;
                bytes += (key.len() + value.len()) as u64;
            }
            progress(rows, bytes);
            match page.next_start {
                Some(next) => start = next,
                None => break,
            }
        }
        let mut trailer = TRAILER.to_le_bytes().to_vec();
        trailer.extend_from_slice(&rows.to_le_bytes());
        write_checked(&mut out, &trailer).map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok((rows, bytes))
    })();
    let (rows, bytes) = match result {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    sync_parent(path)?;
    Ok(Summary {
        rows,
        bytes,
        ts,
        seconds: started.elapsed().as_secs_f64(),
        expired: 0,
    })
}

fn write_checked(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(bytes)?;
    out.write_all(&crc32c::crc32c(bytes).to_le_bytes())
}

fn sync_parent(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            path: parent.to_path_buf(),
            source,
        })
}

/// Reads a backup's rows in order, checking each; the last item is the
/// summary (or the first error).
pub struct Reader {
    path: PathBuf,
    input: BufReader<File>,
    offset: u64,
    pub ts: u64,
    rows: u64,
    bytes: u64,
    done: bool,
    /// Bytes of a record's head: lengths, and the expiry from `BACKUP02`.
    head_bytes: usize,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader> {
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = Reader {
            path: path.to_path_buf(),
            input: BufReader::with_capacity(1 << 20, file),
            offset: 0,
            ts: 0,
            rows: 0,
            bytes: 0,
            done: false,
            head_bytes: 16,
        };
        let header = reader.checked(MAGIC.len() + 8, "the header")?;
        match &header[..MAGIC.len()] {
            magic if magic == MAGIC => {}
            magic if magic == MAGIC_V1 => reader.head_bytes = 8,
            _ => return Err(reader.damaged(0, "no backup header")),
        }
        reader.ts = u64::from_le_bytes(header[MAGIC.len()..].try_into().expect("8 bytes"));
        Ok(reader)
    }

    fn damaged(&self, offset: u64, what: impl Into<String>) -> Error {
        Error::Damaged {
            path: self.path.clone(),
            offset,
            what: what.into(),
        }
    }

    /// Fills `buf`; the end of the file is damage (`what` is cut short).
    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let at = self.offset;
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => self.damaged(at, format!("{what} is cut short")),
            _ => Error::Io {
                path: self.path.clone(),
                source: e,
            },
        })
    }

    /// Checks that `bytes` (read from the current offset) end with the
    /// crc32c of the rest, and steps past them.
    fn check(&mut self, bytes: &[u8], what: &str) -> Result<()> {
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(self.damaged(self.offset, format!("{what} fails its checksum")));
        }
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// The next `len` bytes, checked against the crc32c after them.
    fn checked(&mut self, len: usize, what: &str) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len + 4];
        self.read_exact(&mut buf, what)?;
        self.check(&buf, what)?;
        buf.truncate(len);
        Ok(buf)
    }

    /// The next row, or `None` after the trailer (which must end the file).
    pub fn next_row(&mut self) -> Result<Option<BackupRow>> {
        if self.done {
            return Ok(None);
        }
        // A row: key length, value length, expiry (not in `BACKUP01`),
        // key, value, crc32c. The trailer: the marker in place of a key
        // length, the row count, crc32c.
        let mut lens = [0u8; 8];
        self.read_exact(&mut lens, "the file before its trailer")?;
        let key_len = u32::from_le_bytes(lens[..4].try_into().expect("4 bytes"));
        if key_len == TRAILER {
            let mut trailer = [0u8; 16];
            trailer[..8].copy_from_slice(&lens);
            self.read_exact(&mut trailer[8..], "the trailer")?;
            let at = self.offset;
            self.check(&trailer, "the trailer")?;
            let rows = u64::from_le_bytes(trailer[4..12].try_into().expect("8 bytes"));
            if rows != self.rows {
                return Err(self.damaged(
                    at,
                    format!(
                        "the trailer counts {rows} rows, the file holds {}",
                        self.rows
                    ),
                ));
            }
            let mut extra = [0u8; 1];
            if self.input.read(&mut extra).map_or(true, |n| n != 0) {
                return Err(self.damaged(self.offset, "bytes after the trailer"));
            }
            self.done = true;
            return Ok(None);
        }
        let value_len = u32::from_le_bytes(lens[4..].try_into().expect("4 bytes")) as usize;
        let key_len = key_len as usize;
        if key_len == 0 || key_len > 1 << 20 || value_len > 64 << 20 {
            return Err(self.damaged(
                self.offset,
                format!("a row of {key_len} key and {value_len} value bytes"),
            ));
        }
        let head = self.head_bytes;
        let mut record = vec![0u8; head + key_len + value_len + 4];
        record[..8].copy_from_slice(&lens);
        self.read_exact(&mut record[8..], "a row")?;
        self.check(&record, "a row")?;
        record.truncate(head + key_len + value_len);
        let expires_at_ms = match head {
            16 => u64::from_le_bytes(record[8..16].try_into().expect("8 bytes")),
            _ => 0,
        };
        self.rows += 1;
        self.bytes += (key_len + value_len) as u64;
        let mut key = Bytes::from(record).split_off(head);
        let value = key.split_off(key_len);
        Ok(Some(BackupRow {
            key,
            value,
            expires_at_ms: (expires_at_ms != 0).then_some(expires_at_ms),
        }))
    }
}

/// Checks every row of the backup at `path`; returns its summary.
pub fn verify(path: &Path) -> Result<Summary> {
    let started = Instant::now();
    let mut reader = Reader::open(path)?;
    while reader.next_row()?.is_some() {}
    Ok(Summary {
        rows: reader.rows,
        bytes: reader.bytes,
        ts: reader.ts,
        seconds: started.elapsed().as_secs_f64(),
        expired: 0,
    })
}

/// Writes the backup at `path` into the server (new timestamps, as of
/// now). The file is checked whole first: a damaged one writes nothing.
/// Unless `merge`, the server must hold no live key. A key with an expiry
/// gets the TTL it has left by this machine's clock; one already expired
/// is not written (counted in `Summary::expired`).
pub fn restore(
    client: &mut Client,
    path: &Path,
    merge: bool,
    progress: Progress,
) -> Result<Summary> {
    let started = Instant::now();
    verify(path)?;
    if !merge {
        if let Some((first, _)) = client.scan("", None::<Bytes>, 1)?.rows.first() {
            return Err(Error::NotEmpty {
                first: first.escape_ascii().to_string(),
            });
        }
    }
    let mut reader = Reader::open(path)?;
    let shards = client.shard_count();
    let mut batches: Vec<Vec<BatchOp>> = vec![Vec::new(); shards];
    let mut batch_bytes = vec![0usize; shards];
    let mut in_flight: Vec<std::collections::VecDeque<u64>> = vec![Default::default(); shards];
    let mut expired = 0;
    // Half the frame leaves room for the batch's encoding around the rows.
    let batch_bytes_max = BATCH_BYTES.min(client.entry().frame_bytes_max() / 2);
    let batch_ops_max = BATCH_OPS.min(client.entry().batch_ops_max());
    while let Some(BackupRow {
        key,
        value,
        expires_at_ms,
    }) = reader.next_row()?
    {
        let ttl_ms = match expires_at_ms {
            None => 0,
            Some(at) => match at.checked_sub(wall_ms()) {
                Some(left) if left > 0 => left,
                _ => {
                    expired += 1;
                    continue;
                }
            },
        };
        let shard = client.shard_of(&key);
        let row_bytes = key.len() + value.len();
        let (ops, bytes, sent) = (
            &mut batches[shard],
            &mut batch_bytes[shard],
            &mut in_flight[shard],
        );
        // A row that would take the batch past its bytes goes in the next.
        if !ops.is_empty() && *bytes + row_bytes > batch_bytes_max {
            *bytes = 0;
            send_batch(client, std::mem::take(ops), sent)?;
        }
        *bytes += row_bytes;
        ops.push(BatchOp::Put { key, value, ttl_ms });
        if ops.len() >= batch_ops_max || *bytes >= batch_bytes_max {
            *bytes = 0;
            send_batch(client, std::mem::take(ops), sent)?;
            progress(reader.rows - expired, reader.bytes);
        }
    }
    for (shard, ops) in batches.into_iter().enumerate() {
        if !ops.is_empty() {
            send_batch(client, ops, &mut in_flight[shard])?;
        }
    }
    for (shard, ids) in in_flight.iter_mut().enumerate() {
        while let Some(id) = ids.pop_front() {
            written(client.shard(shard).wait(id)?)?;
        }
    }
    Ok(Summary {
        rows: reader.rows - expired,
        bytes: reader.bytes,
        ts: reader.ts,
        seconds: started.elapsed().as_secs_f64(),
        expired,
    })
}

/// Sends one shard's batch, first waiting for its oldest in flight if
/// `BATCHES_IN_FLIGHT` are.
fn send_batch(
    client: &mut Client,
    ops: Vec<BatchOp>,
    in_flight: &mut std::collections::VecDeque<u64>,
) -> Result<()> {
    let shard = client.shard_of(ops[0].key());
    if in_flight.len() >= BATCHES_IN_FLIGHT {
        let oldest = in_flight.pop_front().expect("in flight");
        written(client.shard(shard).wait(oldest)?)?;
    }
    in_flight.push_back(client.shard(shard).send(&Request::Batch { ops })?);
    Ok(())
}

fn written(response: Response) -> Result<()> {
    match response {
        Response::Written { .. } => Ok(()),
        other => Err(Error::Unexpected(format!("{other:?}"))),
    }
}
