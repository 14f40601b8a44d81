//! The current set of open tables per level. Immutable once built: readers
//! clone the `Rc<Version>` they start with, flush and compaction install a
//! new one, and a table's file stays readable while any reader holds it.

use crate::io::DiskFile;
use crate::manifest::{LevelsState, LEVELS};
use crate::sst::Table;
use std::collections::HashMap;
use std::rc::Rc;

/// Invariant: mirrors a [`LevelsState`]: the same tables in the same order;
/// `seq` is one more than the version it was rebuilt from; `max_ts` is the
/// largest timestamp of any of its tables.
pub struct Version<F: DiskFile> {
    pub levels: Vec<Vec<Rc<Table<F>>>>,
    /// Counts installs: the row cache tags what it learned from a version
    /// with it.
    pub seq: u64,
    pub max_ts: u64,
}

impl<F: DiskFile> Version<F> {
    pub fn empty() -> Self {
        Version {
            levels: (0..LEVELS).map(|_| Vec::new()).collect(),
            seq: 0,
            max_ts: 0,
        }
    }

    /// A version holding the tables `state` names, reusing open ones from
    /// `self` and `fresh`.
    pub fn rebuild(&self, state: &LevelsState, fresh: &[Rc<Table<F>>]) -> Version<F> {
        let mut open: HashMap<u64, Rc<Table<F>>> = HashMap::new();
        for t in self.levels.iter().flatten().chain(fresh) {
            open.insert(t.id(), t.clone());
        }
        let levels: Vec<Vec<Rc<Table<F>>>> = state
            .levels
            .iter()
            .map(|metas| {
                metas
                    .iter()
                    .map(|m| {
                        open.get(&m.id)
                            .cloned()
                            .expect("table of the new version is open")
                    })
                    .collect()
            })
            .collect();
        let max_ts = levels
            .iter()
            .flatten()
            .map(|t| t.meta.props.max_ts)
            .max()
            .unwrap_or(0);
        Version {
            levels,
            seq: self.seq + 1,
            max_ts,
        }
    }

    pub fn level_bytes(&self, level: usize) -> u64 {
        self.levels[level].iter().map(|t| t.meta.file_bytes).sum()
    }

    pub fn table_count(&self) -> usize {
        self.levels.iter().map(Vec::len).sum()
    }
}
