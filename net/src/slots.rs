//! The slot map: which shard owns each of the 16384 slots a key hashes to
//! (`tessera_protocol::slot_of`). Persisted in `<data>/SLOTMAP` so the map,
//! not the shard count, is the source of truth: a restart without
//! `--shards` starts the count the map names, and one with another count
//! is refused until slots can be moved (a backup restored into a new
//! directory changes the count).
//!
//! ```text
//! SLOTMAP := "TSLOTMAP" | version:u32 | shards:u32 | owner:u16 * 16384 | crc32c:u32
//! ```

use anyhow::{bail, Context};
use std::io::Write;
use std::path::Path;
use tessera_protocol::{slot_of, slot_of_hash, SLOTS};

const MAGIC: &[u8; 8] = b"TSLOTMAP";
const VERSION: u32 = 1;

/// Invariant: `owner.len() == SLOTS` and every owner is `< shards`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    shards: usize,
    owner: Vec<u16>,
}

impl SlotMap {
    /// Slots dealt round-robin over `shards`.
    pub fn even(shards: usize) -> SlotMap {
        assert!(shards > 0 && shards <= u16::MAX as usize);
        SlotMap {
            shards,
            owner: (0..SLOTS).map(|s| (s as usize % shards) as u16).collect(),
        }
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    pub fn owners(&self) -> &[u16] {
        &self.owner
    }

    /// The shard owning `key`.
    pub fn shard_of(&self, key: &[u8]) -> usize {
        self.owner[slot_of(key) as usize] as usize
    }

    /// The shard of a key whose `xxh3_64` is `hash`.
    pub fn shard_of_hash(&self, hash: u64) -> usize {
        self.owner[slot_of_hash(hash) as usize] as usize
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 2 * self.owner.len() + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.shards as u32).to_le_bytes());
        for o in &self.owner {
            out.extend_from_slice(&o.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(raw: &[u8]) -> anyhow::Result<SlotMap> {
        let expected = 16 + 2 * SLOTS as usize + 4;
        if raw.len() != expected || &raw[..8] != MAGIC {
            bail!("not a slot map");
        }
        let body = raw.len() - 4;
        if crc32c::crc32c(&raw[..body]) != u32::from_le_bytes(raw[body..].try_into()?) {
            bail!("slot map failed its checksum");
        }
        if u32::from_le_bytes(raw[8..12].try_into()?) != VERSION {
            bail!("unsupported slot map version");
        }
        let shards = u32::from_le_bytes(raw[12..16].try_into()?) as usize;
        let owner: Vec<u16> = raw[16..body]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        if shards == 0 || owner.iter().any(|&o| o as usize >= shards) {
            bail!("slot map names a shard out of range");
        }
        Ok(SlotMap { shards, owner })
    }

    /// The map saved in `<data>/SLOTMAP`, if the directory has one.
    pub fn saved(data: &Path) -> anyhow::Result<Option<SlotMap>> {
        let path = data.join("SLOTMAP");
        match std::fs::read(&path) {
            Ok(raw) => SlotMap::decode(&raw)
                .map(Some)
                .with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Loads `<data>/SLOTMAP`, or writes an even map for `shards` if the
    /// directory is new. A map for another shard count is refused.
    pub fn load_or_create(data: &Path, shards: usize) -> anyhow::Result<SlotMap> {
        std::fs::create_dir_all(data)
            .with_context(|| format!("creating data directory {}", data.display()))?;
        match SlotMap::saved(data)? {
            Some(map) if map.shards != shards => bail!(
                "data directory {} was written with {} shards; started with {shards} \
                 (start it with --shards {}, or without --shards; to change the count, \
                 back it up and restore into a new directory: docs/operations.md)",
                data.display(),
                map.shards,
                map.shards
            ),
            Some(map) => Ok(map),
            None => {
                let path = data.join("SLOTMAP");
                let map = SlotMap::even(shards);
                let tmp = data.join("SLOTMAP.tmp");
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&map.encode())?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(data)?.sync_all()?;
                Ok(map)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_map_reloads_and_another_shard_count_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let map = SlotMap::load_or_create(dir.path(), 3).unwrap();
        assert_eq!(SlotMap::load_or_create(dir.path(), 3).unwrap(), map);
        let err = SlotMap::load_or_create(dir.path(), 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("written with 3 shards; started with 2"),
            "{err}"
        );
    }

    #[test]
    fn keys_spread_over_all_shards() {
        let map = SlotMap::even(4);
        let mut counts = [0; 4];
        for i in 0..4000 {
            counts[map.shard_of(format!("key{i}").as_bytes())] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
