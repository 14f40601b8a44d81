//! The manifest: a crc-protected log of version edits (which tables are in
//! which level, the oldest WAL segment still needed, the next table id).
//!
//! ```text
//! CURRENT   := "MANIFEST-<n>\n", zero padded to 4 KiB
//! MANIFEST  := record*             (contiguous; a zero header ends the log)
//! record    := crc32c:u32 | len:u32 | edit[len]     (crc over len and edit)
//! edit      := tag:u8 field ...    1 log_number:u64 | 2 next_table_id:u64
//!              | 3 add level:u8 table | 4 remove level:u8 id:u64
//!              | 5 expiring:u64 expires_by_ms:u64 | 6 overwritten:u64
//!                (5 and 6 follow the 3 of the table they describe, only
//!                 when not zero)
//! table     := id:u64 | file_bytes:u64 | key_len:u16 | smallest | ts:u64
//!              | key_len:u16 | largest | ts:u64 | entries:u64 | min_ts:u64 | max_ts:u64
//! ```
//! Appends rewrite the tail block (bytes already written never change, so a
//! torn rewrite cannot damage earlier records). Every open and every
//! `roll_bytes` of edits, a fresh manifest is started with one snapshot edit
//! and CURRENT is switched atomically (write, fsync, rename, fsync dir).

use crate::error::{Error, Result};
use crate::io::{align_down, align_up, Disk, DiskFile, ALIGN};
use crate::key::InternalKey;
use crate::sst::format::Props;
use crate::sst::TableMeta;
use bytes::{Buf, BufMut, Bytes};
use std::path::{Path, PathBuf};

pub const LEVELS: usize = 7;

/// One change to the set of tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edit {
    pub log_number: Option<u64>,
    pub next_table_id: Option<u64>,
    pub added: Vec<(usize, TableMeta)>,
    pub removed: Vec<(usize, u64)>,
}

/// Table metadata per level, as the manifest says.
///
/// Invariant: level 0 is ordered newest first (id descending); every other
/// level is ordered by smallest key and its tables' user-key ranges are
/// disjoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LevelsState {
    pub levels: Vec<Vec<TableMeta>>,
    pub log_number: u64,
    pub next_table_id: u64,
}

impl LevelsState {
    pub fn new() -> Self {
        LevelsState {
            levels: vec![Vec::new(); LEVELS],
            log_number: 0,
            next_table_id: 1,
        }
    }

    pub fn apply(&mut self, edit: &Edit) {
        if let Some(n) = edit.log_number {
            self.log_number = self.log_number.max(n);
        }
        if let Some(n) = edit.next_table_id {
            self.next_table_id = self.next_table_id.max(n);
        }
        for (level, id) in &edit.removed {
            self.levels[*level].retain(|t| t.id != *id);
        }
        for (level, meta) in &edit.added {
            self.levels[*level].push(meta.clone());
            self.next_table_id = self.next_table_id.max(meta.id + 1);
        }
        for (level, tables) in self.levels.iter_mut().enumerate() {
            if level == 0 {
                tables.sort_by_key(|t| std::cmp::Reverse(t.id));
            } else {
                tables.sort_by(|a, b| a.smallest.cmp(&b.smallest));
            }
        }
    }

    fn snapshot(&self) -> Edit {
        Edit {
            log_number: Some(self.log_number),
            next_table_id: Some(self.next_table_id),
            added: self
                .levels
                .iter()
                .enumerate()
                .flat_map(|(l, ts)| ts.iter().map(move |t| (l, t.clone())))
                .collect(),
            removed: Vec::new(),
        }
    }
}

fn put_key(out: &mut Vec<u8>, k: &InternalKey) {
    out.put_u16_le(k.user().len() as u16);
    out.extend_from_slice(k.user());
    out.put_u64_le(k.ts());
}

fn get_key(b: &mut &[u8]) -> Option<InternalKey> {
    if b.remaining() < 2 {
        return None;
    }
    let len = b.get_u16_le() as usize;
    if b.remaining() < len + 8 {
        return None;
    }
    let user = Bytes::copy_from_slice(&b[..len]);
    b.advance(len);
    Some(InternalKey::new(user, b.get_u64_le()))
}

pub fn encode_edit(edit: &Edit) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(n) = edit.log_number {
        out.put_u8(1);
        out.put_u64_le(n);
    }
    if let Some(n) = edit.next_table_id {
        out.put_u8(2);
        out.put_u64_le(n);
    }
    for (level, t) in &edit.added {
        out.put_u8(3);
        out.put_u8(*level as u8);
        out.put_u64_le(t.id);
        out.put_u64_le(t.file_bytes);
        put_key(&mut out, &t.smallest);
        put_key(&mut out, &t.largest);
        out.put_u64_le(t.props.entries);
        out.put_u64_le(t.props.min_ts);
        out.put_u64_le(t.props.max_ts);
        // Only for tables holding expiring puts, so that manifests without
        // them stay readable by builds that predate the tag.
        if t.props.expiring > 0 {
            out.put_u8(5);
            out.put_u64_le(t.props.expiring);
            out.put_u64_le(t.props.expires_by_ms);
        }
        if t.props.overwritten > 0 {
            out.put_u8(6);
            out.put_u64_le(t.props.overwritten);
        }
    }
    for (level, id) in &edit.removed {
        out.put_u8(4);
        out.put_u8(*level as u8);
        out.put_u64_le(*id);
    }
    out
}

pub fn decode_edit(mut b: &[u8]) -> Option<Edit> {
    let mut edit = Edit::default();
    while b.has_remaining() {
        let tag = b.get_u8();
        match tag {
            1 | 2 if b.remaining() >= 8 => {
                let n = b.get_u64_le();
                if tag == 1 {
                    edit.log_number = Some(n);
                } else {
                    edit.next_table_id = Some(n);
                }
            }
            3 if b.remaining() >= 17 => {
                let level = b.get_u8() as usize;
                let id = b.get_u64_le();
                let file_bytes = b.get_u64_le();
                let smallest = get_key(&mut b)?;
                let largest = get_key(&mut b)?;
                if level >= LEVELS || b.remaining() < 24 {
                    return None;
                }
                let props = Props {
                    entries: b.get_u64_le(),
                    min_ts: b.get_u64_le(),
                    max_ts: b.get_u64_le(),
                    ..Props::default()
                };
                edit.added.push((
                    level,
                    TableMeta {
                        id,
                        file_bytes,
                        smallest,
                        largest,
                        props,
                    },
                ));
            }
            // The expiry figures of the table just added.
            5 if b.remaining() >= 16 => {
                let (_, table) = edit.added.last_mut()?;
                table.props.expiring = b.get_u64_le();
                table.props.expires_by_ms = b.get_u64_le();
            }
            // The overwritten count of the table just added.
            6 if b.remaining() >= 8 => {
                let (_, table) = edit.added.last_mut()?;
                table.props.overwritten = b.get_u64_le();
            }
            4 if b.remaining() >= 9 => {
                let level = b.get_u8() as usize;
                if level >= LEVELS {
                    return None;
                }
                edit.removed.push((level, b.get_u64_le()));
            }
            _ => return None,
        }
    }
    Some(edit)
}

/// The open manifest log.
pub struct Manifest<D: Disk> {
    disk: D,
    dir: PathBuf,
    number: u64,
    file: D::File,
    content: Vec<u8>,
    roll_bytes: usize,
}

fn manifest_name(n: u64) -> String {
    format!("MANIFEST-{n:016}")
}

impl<D: Disk> Manifest<D> {
    /// Reads the current manifest (or starts an empty one) and rolls to a
    /// fresh file holding one snapshot.
    pub async fn open(
        disk: &D,
        dir: &Path,
        roll_bytes: usize,
    ) -> Result<(Manifest<D>, LevelsState)> {
        let current = dir.join("CURRENT");
        let mut state = LevelsState::new();
        let mut number = 0;
        if disk.exists(&current).await {
            let file = disk.open(&current).await?;
            let raw = file.read_at(0, ALIGN).await?;
            let text = std::str::from_utf8(&raw)
                .ok()
                .map(|s| s.trim_end_matches('\0'))
                .and_then(|s| s.strip_suffix('\n'))
                .filter(|s| s.starts_with("MANIFEST-"))
                .ok_or_else(|| {
                    Error::corruption(&current, 0, "CURRENT does not name a manifest")
                })?;
            number = text["MANIFEST-".len()..]
                .parse()
                .map_err(|_| Error::corruption(&current, 0, "CURRENT does not name a manifest"))?;
            let path = dir.join(text);
            let file = disk.open(&path).await?;
            let size = file.size().await?;
            let raw = file.read_at(0, size as usize).await?;
            let mut pos = 0;
            while pos + 8 <= raw.len() {
                let crc = u32::from_le_bytes(raw[pos..pos + 4].try_into().unwrap());
                let len = u32::from_le_bytes(raw[pos + 4..pos + 8].try_into().unwrap()) as usize;
                if crc == 0 && len == 0 {
                    break;
                }
                let end = pos + 8 + len;
                let valid = end <= raw.len() && crc32c::crc32c(&raw[pos + 4..end]) == crc;
                let edit = valid.then(|| decode_edit(&raw[pos + 8..end])).flatten();
                match edit {
                    Some(edit) => state.apply(&edit),
                    None => {
                        // The first manifest after an open holds one
                        // snapshot, so anything invalid is the torn tail of
                        // an edit that was never acknowledged.
                        tracing::warn!(path = %path.display(), offset = pos, "cutting torn manifest tail");
                        break;
                    }
                }
                pos = end;
            }
        }
        let (file, content) = start_manifest(disk, dir, number + 1, &state).await?;
        let manifest = Manifest {
            disk: disk.clone(),
            dir: dir.to_path_buf(),
            number: number + 1,
            file,
            content,
            roll_bytes,
        };
        Ok((manifest, state))
    }

    async fn roll(&mut self, state: &LevelsState) -> Result<()> {
        let (file, content) = start_manifest(&self.disk, &self.dir, self.number + 1, state).await?;
        self.number += 1;
        self.file = file;
        self.content = content;
        Ok(())
    }

    /// Appends an edit durably; `state` must already include it.
    pub async fn append(&mut self, edit: &Edit, state: &LevelsState) -> Result<()> {
        if self.content.len() >= self.roll_bytes {
            return self.roll(state).await;
        }
        let old_len = self.content.len();
        push_record(&mut self.content, &encode_edit(edit));
        let start = align_down(old_len as u64) as usize;
        let mut block = self.content[start..].to_vec();
        block.resize(align_up(block.len()), 0);
        let result = async {
            self.file.write_at(&block, start as u64).await?;
            self.file.sync().await
        }
        .await;
        if result.is_err() {
            self.content.truncate(old_len);
        }
        result
    }
}

/// Writes manifest `number` holding one snapshot of `state`, points CURRENT
/// at it atomically and removes older manifests.
async fn start_manifest<D: Disk>(
    disk: &D,
    dir: &Path,
    number: u64,
    state: &LevelsState,
) -> Result<(D::File, Vec<u8>)> {
    let file = disk.create(&dir.join(manifest_name(number))).await?;
    let mut content = Vec::new();
    push_record(&mut content, &encode_edit(&state.snapshot()));
    let mut padded = content.clone();
    padded.resize(align_up(padded.len()), 0);
    file.write_at(&padded, 0).await?;
    file.sync().await?;
    let tmp = dir.join("CURRENT.tmp");
    let current = disk.create(&tmp).await?;
    let mut text = format!("{}\n", manifest_name(number)).into_bytes();
    text.resize(ALIGN, 0);
    current.write_at(&text, 0).await?;
    current.sync().await?;
    disk.rename(&tmp, &dir.join("CURRENT")).await?;
    disk.sync_dir(dir).await?;
    for name in disk.list(dir).await? {
        if name.starts_with("MANIFEST-") && name != manifest_name(number) {
            disk.remove(&dir.join(&name)).await?;
        }
    }
    Ok((file, content))
}

fn push_record(out: &mut Vec<u8>, payload: &[u8]) {
    let start = out.len();
    out.put_u32_le(0);
    out.put_u32_le(payload.len() as u32);
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_round_trip() {
        let edit = Edit {
            log_number: Some(4),
            next_table_id: Some(9),
            added: vec![
                (
                    2,
                    TableMeta {
                        id: 8,
                        file_bytes: 8192,
                        smallest: InternalKey::new(Bytes::from_static(b"a"), 5),
                        largest: InternalKey::new(Bytes::from_static(b"z"), 1),
                        props: Props {
                            entries: 3,
                            min_ts: 1,
                            max_ts: 5,
                            expiring: 2,
                            expires_by_ms: 1_800_000_000_000,
                            overwritten: 1,
                        },
                    },
                ),
                (
                    3,
                    TableMeta {
                        id: 9,
                        file_bytes: 4096,
                        smallest: InternalKey::new(Bytes::from_static(b"b"), 5),
                        largest: InternalKey::new(Bytes::from_static(b"c"), 1),
                        props: Props {
                            entries: 1,
                            min_ts: 6,
                            max_ts: 6,
                            ..Props::default()
                        },
                    },
                ),
            ],
            removed: vec![(1, 3)],
        };
        assert_eq!(decode_edit(&encode_edit(&edit)), Some(edit));
        assert_eq!(decode_edit(&[9, 1, 2]), None);
        // Expiry figures with no table before them.
        let mut orphan = vec![5];
        orphan.extend_from_slice(&[0; 16]);
        assert_eq!(decode_edit(&orphan), None);
        let mut orphan = vec![6];
        orphan.extend_from_slice(&[0; 8]);
        assert_eq!(decode_edit(&orphan), None);
    }
}
