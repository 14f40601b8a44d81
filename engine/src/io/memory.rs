//! An in-memory disk for tests that can fail on purpose: EIO or ENOSPC on
//! writes, syncs or reads, a capacity limit, bit flips, and crashes that drop
//! (or tear) everything not yet made durable by `sync` / `sync_dir`.

use super::{Disk, DiskFile, ALIGN};
use crate::error::{Error, Result};
use bytes::Bytes;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// A failure to inject. Persistent until [`MemDisk::clear_faults`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every write fails with this errno (e.g. `libc::EIO`, `libc::ENOSPC`).
    Writes(i32),
    /// Every fdatasync fails with this errno.
    Syncs(i32),
    /// Every read fails with this errno.
    Reads(i32),
    /// Writes whose path contains the given marker fail with EIO.
    WritesTo(&'static str),
}

enum PendingOp {
    Write { offset: u64, data: Vec<u8> },
    Truncate(u64),
}

#[derive(Default)]
struct FileData {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<PendingOp>,
}

impl FileData {
    /// Applies every pending operation to the durable contents, in order.
    fn make_durable(&mut self) {
        for op in std::mem::take(&mut self.pending) {
            Self::apply(&mut self.durable, &op, None);
        }
    }

    fn apply(target: &mut Vec<u8>, op: &PendingOp, limit: Option<usize>) {
        match op {
            PendingOp::Write { offset, data } => {
                let data = &data[..limit.unwrap_or(data.len()).min(data.len())];
                let end = *offset as usize + data.len();
                if target.len() < end {
                    target.resize(end, 0);
                }
                target[*offset as usize..end].copy_from_slice(data);
            }
            PendingOp::Truncate(len) => target.resize(*len as usize, 0),
        }
    }
}

type FileRef = Rc<RefCell<FileData>>;

#[derive(Default)]
struct State {
    names: BTreeMap<PathBuf, FileRef>,
    durable_names: BTreeMap<PathBuf, FileRef>,
    dirs: BTreeSet<PathBuf>,
    capacity_bytes: Option<u64>,
    faults: Vec<Fault>,
    syncs: u64,
    reads: u64,
    /// While set, removes wait ([`MemDisk::hold_removes`]).
    removes_held: bool,
    removes_released: event_listener::Event,
}

impl State {
    fn used_bytes(&self) -> u64 {
        self.names
            .values()
            .map(|f| f.borrow().current.len() as u64)
            .sum()
    }

    fn fault(&self, pick: impl Fn(&Fault) -> Option<i32>) -> Option<std::io::Error> {
        self.faults
            .iter()
            .find_map(pick)
            .map(std::io::Error::from_raw_os_error)
    }
}

/// The fault-injecting in-memory disk. Cloning shares the same disk.
#[derive(Clone, Default)]
pub struct MemDisk {
    state: Rc<RefCell<State>>,
}

/// An open in-memory file.
pub struct MemFile {
    data: FileRef,
    path: PathBuf,
    state: Rc<RefCell<State>>,
    /// Opened with `open_write_through`: each write also does a `sync`'s
    /// work (and fails as a sync would).
    write_through: bool,
}

fn not_found(op: &'static str, path: &Path) -> Error {
    Error::io(op, path, std::io::Error::from_raw_os_error(libc::ENOENT))
}

impl MemDisk {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn inject(&self, fault: Fault) {
        self.state.borrow_mut().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.state.borrow_mut().faults.clear();
    }

    /// While `held`, every remove waits (as a real one waits for its
    /// unlink off the executor's thread), so a test can close an engine
    /// while one is in flight; releasing lets them finish.
    pub fn hold_removes(&self, held: bool) {
        let mut state = self.state.borrow_mut();
        state.removes_held = held;
        if !held {
            state.removes_released.notify(usize::MAX);
        }
    }

    /// Limits the total size of all files; writes past it fail with ENOSPC.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.state.borrow_mut().capacity_bytes = bytes;
    }

    pub fn used_bytes(&self) -> u64 {
        self.state.borrow().used_bytes()
    }

    /// Number of successful fdatasync calls so far.
    pub fn syncs(&self) -> u64 {
        self.state.borrow().syncs
    }

    /// Number of reads so far, failed ones included.
    pub fn reads(&self) -> u64 {
        self.state.borrow().reads
    }

    /// Simulates power loss: returns the disk as a restarted machine sees
    /// it, every file at its last synced contents and every directory at its
    /// last synced entries. `self` (and everything still holding it, such as
    /// the engine that "crashed") goes on with a detached copy, so nothing it
    /// does afterwards reaches the returned disk.
    pub fn crash(&self) -> MemDisk {
        self.crash_with(|_, _| None)
    }

    /// Simulates the process being killed (`kill -9`) while the machine
    /// stays up: every write reached the OS, synced or not, so every file
    /// keeps all of it.
    pub fn kill(&self) -> MemDisk {
        self.crash_with(|_, pending| Some((pending, 0)))
    }

    /// Like [`crash`](Self::crash), but for each file a random prefix of its
    /// unsynced writes survives, the next one torn at a 512-byte sector
    /// (deterministic for a seed).
    pub fn crash_torn(&self, seed: u64) -> MemDisk {
        let mut x = seed | 1;
        let mut next = move |bound: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (bound as u64 + 1)) as usize
        };
        self.crash_with(|_, pending| {
            let kept = next(pending);
            Some((kept, next(16)))
        })
    }

    fn crash_with(
        &self,
        mut choose: impl FnMut(usize, usize) -> Option<(usize, usize)>,
    ) -> MemDisk {
        let state = self.state.borrow();
        let mut fresh = BTreeMap::new();
        for (i, (path, file)) in state.durable_names.iter().enumerate() {
            let old = file.borrow();
            let mut contents = old.durable.clone();
            if let Some((kept, sectors)) = choose(i, old.pending.len()) {
                for op in old.pending.iter().take(kept) {
                    FileData::apply(&mut contents, op, None);
                }
                if let Some(op) = old.pending.get(kept) {
                    FileData::apply(&mut contents, op, Some(sectors * 512));
                }
            }
            fresh.insert(
                path.clone(),
                Rc::new(RefCell::new(FileData {
                    current: contents.clone(),
                    durable: contents,
                    pending: Vec::new(),
                })),
            );
        }
        MemDisk {
            state: Rc::new(RefCell::new(State {
                names: fresh.clone(),
                durable_names: fresh,
                dirs: state.dirs.clone(),
                capacity_bytes: state.capacity_bytes,
                faults: Vec::new(),
                syncs: 0,
                reads: 0,
                ..State::default()
            })),
        }
    }

    /// Flips one bit of a file, durably (models media corruption).
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) {
        let state = self.state.borrow();
        let file = state.names.get(path).expect("flip_bit: no such file");
        let mut f = file.borrow_mut();
        f.current[offset as usize] ^= 1 << bit;
        if (offset as usize) < f.durable.len() {
            f.durable[offset as usize] ^= 1 << bit;
        }
    }

    /// Current length of a file, if it exists.
    pub fn file_len(&self, path: &Path) -> Option<u64> {
        let state = self.state.borrow();
        state
            .names
            .get(path)
            .map(|f| f.borrow().current.len() as u64)
    }

    /// Every file path, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.state.borrow().names.keys().cloned().collect()
    }

    fn open_file(&self, path: &Path, write_through: bool) -> Result<MemFile> {
        let state = self.state.borrow();
        let data = state
            .names
            .get(path)
            .ok_or_else(|| not_found("open", path))?;
        Ok(MemFile {
            data: data.clone(),
            path: path.to_path_buf(),
            state: self.state.clone(),
            write_through,
        })
    }
}

impl Disk for MemDisk {
    type File = MemFile;

    async fn create(&self, path: &Path) -> Result<MemFile> {
        let mut state = self.state.borrow_mut();
        if let Some(err) = state.fault(|f| match f {
            Fault::Writes(code) => Some(*code),
            _ => None,
        }) {
            return Err(Error::io("create", path, err));
        }
        let parent = path.parent().unwrap_or(Path::new("")).to_path_buf();
        if !state.dirs.contains(&parent) {
            return Err(not_found("create", path));
        }
        let data: FileRef = Rc::default();
        state.names.insert(path.to_path_buf(), data.clone());
        Ok(MemFile {
            data,
            path: path.to_path_buf(),
            state: self.state.clone(),
            write_through: false,
        })
    }

    async fn open(&self, path: &Path) -> Result<MemFile> {
        self.open_file(path, false)
    }

    async fn open_write_through(&self, path: &Path) -> Result<MemFile> {
        self.open_file(path, true)
    }

    async fn remove(&self, path: &Path) -> Result<()> {
        loop {
            let released = {
                let state = self.state.borrow();
                if !state.removes_held {
                    break;
                }
                state.removes_released.listen()
            };
            released.await;
        }
        let mut state = self.state.borrow_mut();
        state
            .names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found("remove", path))
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let mut state = self.state.borrow_mut();
        let data = state
            .names
            .remove(from)
            .ok_or_else(|| not_found("rename", from))?;
        state.names.insert(to.to_path_buf(), data);
        Ok(())
    }

    async fn sync_dir(&self, dir: &Path) -> Result<()> {
        let mut state = self.state.borrow_mut();
        let in_dir = |p: &Path| p.parent() == Some(dir);
        state.durable_names.retain(|p, _| !in_dir(p));
        let entries: Vec<_> = state
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, f)| (p.clone(), f.clone()))
            .collect();
        state.durable_names.extend(entries);
        Ok(())
    }

    async fn create_dir_all(&self, dir: &Path) -> Result<()> {
        let mut state = self.state.borrow_mut();
        for ancestor in dir.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    async fn list(&self, dir: &Path) -> Result<Vec<String>> {
        let state = self.state.borrow();
        if !state.dirs.contains(dir) {
            return Err(not_found("list", dir));
        }
        Ok(state
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    async fn exists(&self, path: &Path) -> bool {
        let state = self.state.borrow();
        state.names.contains_key(path) || state.dirs.contains(path)
    }
}

impl DiskFile for MemFile {
    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        assert_eq!(data.len() % ALIGN, 0, "unaligned write length");
        assert_eq!(offset % ALIGN as u64, 0, "unaligned write offset");
        let state = self.state.borrow();
        let marker = self.path.to_string_lossy();
        if let Some(err) = state.fault(|f| match f {
            Fault::Writes(code) => Some(*code),
            Fault::WritesTo(m) if marker.contains(m) => Some(libc::EIO),
            Fault::Syncs(code) if self.write_through => Some(*code),
            _ => None,
        }) {
            return Err(Error::io("write", &self.path, err));
        }
        let end = offset as usize + data.len();
        let growth = end.saturating_sub(self.data.borrow().current.len()) as u64;
        if let Some(capacity) = state.capacity_bytes {
            if growth > 0 && state.used_bytes() + growth > capacity {
                return Err(Error::io(
                    "write",
                    &self.path,
                    std::io::Error::from_raw_os_error(libc::ENOSPC),
                ));
            }
        }
        let op = PendingOp::Write {
            offset,
            data: data.to_vec(),
        };
        let mut file = self.data.borrow_mut();
        FileData::apply(&mut file.current, &op, None);
        file.pending.push(op);
        if self.write_through {
            // Modelled as write + fdatasync: earlier unsynced writes of
            // the file become durable too, in order.
            file.make_durable();
        }
        Ok(())
    }

    async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes> {
        self.state.borrow_mut().reads += 1;
        if let Some(err) = self.state.borrow().fault(|f| match f {
            Fault::Reads(code) => Some(*code),
            _ => None,
        }) {
            return Err(Error::io("read", &self.path, err));
        }
        let file = self.data.borrow();
        let start = (offset as usize).min(file.current.len());
        let end = (start + len).min(file.current.len());
        Ok(Bytes::copy_from_slice(&file.current[start..end]))
    }

    async fn sync(&self) -> Result<()> {
        let mut state = self.state.borrow_mut();
        if let Some(err) = state.fault(|f| match f {
            Fault::Syncs(code) => Some(*code),
            _ => None,
        }) {
            return Err(Error::io("fdatasync", &self.path, err));
        }
        state.syncs += 1;
        self.data.borrow_mut().make_durable();
        Ok(())
    }

    async fn size(&self) -> Result<u64> {
        Ok(self.data.borrow().current.len() as u64)
    }

    async fn truncate(&self, len: u64) -> Result<()> {
        let mut file = self.data.borrow_mut();
        let op = PendingOp::Truncate(len);
        FileData::apply(&mut file.current, &op, None);
        file.pending.push(op);
        Ok(())
    }

    fn path(&self) -> &Path {
        &self.path
    }
}
