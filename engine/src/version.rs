//! The current set of open tables per level. Immutable once built: readers
//! clone the `Rc<Version>` they start with, flush and compaction install a
//! new one, and a table's file stays readable while any reader holds it.

use crate::io::DiskFile;
use crate::manifest::{LevelsState, LEVELS};
use crate::sst::Table;
use std::collections::HashMap;
use std::rc::Rc;

/// Invariant: mirrors a [`LevelsState`]: the same tables in the same order.
pub struct Version<F: DiskFile> {
    pub levels: Vec<Vec<Rc<Table<F>>>>,
}

impl<F: DiskFile> Version<F> {
    pub fn empty() -> Self {
        Version {
            levels: (0..LEVELS).map(|_| Vec::new()).collect(),
        }
    }

    /// A version holding the tables `state` names, reusing open ones from
    /// `self` and `fresh`.
    pub fn rebuild(&self, state: &LevelsState, fresh: &[Rc<Table<F>>]) -> Version<F> {
        let mut open: HashMap<u64, Rc<Table<F>>> = HashMap::new();
        for t in self.levels.iter().flatten().chain(fresh) {
            open.insert(t.id(), t.clone());
        }
        let levels = state
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
        Version { levels }
    }

    pub fn level_bytes(&self, level: usize) -> u64 {
        self.levels[level].iter().map(|t| t.meta.file_bytes).sum()
    }

    pub fn table_count(&self) -> usize {
        self.levels.iter().map(Vec::len).sum()
    }
}
