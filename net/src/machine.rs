//! What the server may use of this machine: its memory and its CPUs.
//!
//! The memory limit is the machine's memory or, when lower, the memory
//! limit of the cgroup the server runs in (a container's `--memory`, a
//! systemd unit's `MemoryMax=`): /proc/meminfo reports the host's memory
//! inside a container, and a server that sized itself from it was killed
//! by the kernel's OOM killer before it was ready (two default shards
//! prefault 1 GiB; measured in a 1 GiB cgroup). The shards' memory budgets
//! are sized to it ([`fit`]).
//!
//! The CPUs are those of the process's affinity mask (`taskset`, a
//! container's cpuset): shards are pinned among them. Pinned to CPUs
//! 0..n instead, a server started with `taskset -c 1` ran its shard on
//! CPU 0, off the CPUs it was given (and where a cpuset forbids that, the
//! pinning fails).

use std::path::{Path, PathBuf};
use tessera_engine::Options;

/// What the server may use of this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub memory: Option<MemoryLimit>,
    /// The CPUs this process may run on, ascending (never empty).
    pub cpus: Vec<usize>,
    /// Shards by default: std's `available_parallelism`, which is the
    /// count of `cpus` lowered by a cgroup CPU quota.
    pub parallelism: usize,
}

impl Machine {
    pub fn read() -> Machine {
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpus = allowed_cpus().unwrap_or_else(|| (0..parallelism).collect());
        Machine {
            memory: limit(),
            cpus,
            parallelism,
        }
    }
}

/// The CPUs of this process's affinity mask, ascending.
fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and
    // sched_getaffinity writes at most its size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        set
    };
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below the set's size.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    (!cpus.is_empty()).then_some(cpus)
}

/// CPUs as a list of ranges: "0-3,6".
pub fn cpu_ranges(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        while i + 1 < cpus.len() && cpus[i + 1] == cpus[i] + 1 {
            i += 1;
        }
        parts.push(match cpus[i] == start {
            true => start.to_string(),
            false => format!("{start}-{}", cpus[i]),
        });
        i += 1;
    }
    parts.join(",")
}

/// The memory the server may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: usize,
    /// The limit is a cgroup's, not the machine's.
    pub cgroup: bool,
}

impl MemoryLimit {
    /// Whose limit it is, for the log: "cgroup" or "machine".
    pub fn of(&self) -> &'static str {
        match self.cgroup {
            true => "cgroup",
            false => "machine",
        }
    }
}

/// The machine's memory, or its cgroup's limit when lower; `None` when
/// neither can be read.
pub fn limit() -> Option<MemoryLimit> {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| meminfo_bytes(&m, "MemTotal:"));
    let cgroup = match (
        std::fs::read_to_string("/proc/self/cgroup"),
        std::fs::read_to_string("/proc/self/mountinfo"),
    ) {
        (Ok(cgroups), Ok(mounts)) => {
            cgroup_limit(&cgroups, &mounts, |p| std::fs::read_to_string(p).ok())
        }
        _ => None,
    };
    pick_limit(total, cgroup)
}

/// The lower of the machine's memory and its cgroup's limit.
fn pick_limit(total: Option<usize>, cgroup: Option<usize>) -> Option<MemoryLimit> {
    match (total, cgroup) {
        (Some(t), Some(c)) if c < t => Some(MemoryLimit {
            bytes: c,
            cgroup: true,
        }),
        (Some(t), _) => Some(MemoryLimit {
            bytes: t,
            cgroup: false,
        }),
        (None, Some(c)) => Some(MemoryLimit {
            bytes: c,
            cgroup: true,
        }),
        (None, None) => None,
    }
}

/// The memory the kernel reports available now, capped by `limit` (a
/// cgroup's limit is not in /proc/meminfo).
pub fn available(limit: Option<MemoryLimit>) -> Option<usize> {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| meminfo_bytes(&m, "MemAvailable:"));
    match (available, limit) {
        (Some(a), Some(l)) => Some(a.min(l.bytes)),
        (a, l) => a.or(l.map(|l| l.bytes)),
    }
}

/// A `/proc/meminfo` field (`MemTotal:`, `MemAvailable:`), in bytes.
pub fn meminfo_bytes(meminfo: &str, field: &str) -> Option<usize> {
    let kib: usize = meminfo
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib << 10)
}

/// The lowest memory limit of the process's cgroups and their ancestors
/// that the mounted hierarchies show, cgroup v2 (`memory.max`) and v1
/// (`memory.limit_in_bytes`) alike. `cgroups` is /proc/self/cgroup,
/// `mounts` /proc/self/mountinfo, `read` reads a file of the hierarchy.
fn cgroup_limit(
    cgroups: &str,
    mounts: &str,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<usize> {
    let mut lowest: Option<usize> = None;
    for line in cgroups.lines() {
        // "hierarchy-ID:controller-list:cgroup-path"
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (v2, file) = match (id, controllers) {
            ("0", "") => (true, "memory.max"),
            (_, c) if c.split(',').any(|c| c == "memory") => (false, "memory.limit_in_bytes"),
            _ => continue,
        };
        let Some(dir) = cgroup_dir(mounts, v2, path) else {
            continue;
        };
        // A cgroup is held to the limits of its ancestors too, up to the
        // hierarchy's root as this process's mount shows it.
        let mut at: Option<&Path> = Some(&dir.path);
        while let Some(d) = at {
            if let Some(bytes) = read(&d.join(file)).and_then(|t| limit_bytes(&t)) {
                lowest = Some(lowest.map_or(bytes, |l| l.min(bytes)));
            }
            if d == dir.mount_point {
                break;
            }
            at = d.parent();
        }
    }
    lowest
}

/// A cgroup's directory in the mounted hierarchy, and that mount's point.
struct CgroupDir {
    path: PathBuf,
    mount_point: PathBuf,
}

/// Where cgroup `path` of the v2 hierarchy (`v2`) or of v1's memory
/// controller is mounted. A mount may show a subtree (its root, the
/// fourth field, is then a cgroup path, as in a container without a
/// cgroup namespace): the cgroup's path is taken relative to it.
fn cgroup_dir(mounts: &str, v2: bool, path: &str) -> Option<CgroupDir> {
    mounts.lines().find_map(|line| {
        // "id parent major:minor root mount-point options [optional...] - fstype source super-options"
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split_whitespace();
        let fstype = right.next()?;
        let super_options = right.nth(1).unwrap_or("");
        let is_ours = match v2 {
            true => fstype == "cgroup2",
            false => fstype == "cgroup" && super_options.split(',').any(|o| o == "memory"),
        };
        if !is_ours {
            return None;
        }
        let mut left = left.split_whitespace();
        let root = left.nth(3)?;
        let mount_point = PathBuf::from(unescape_mount_field(left.next()?));
        let relative = match root {
            "/" => path,
            root => path.strip_prefix(root)?,
        };
        Some(CgroupDir {
            path: mount_point.join(relative.trim_start_matches('/')),
            mount_point,
        })
    })
}

/// mountinfo writes a space in a path as `\040` (and a tab, newline and
/// backslash likewise in octal).
fn unescape_mount_field(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// A limit file's value; `max` (v2) and v1's "no limit" (a page-rounded
/// `i64::MAX`) are none.
fn limit_bytes(text: &str) -> Option<usize> {
    let bytes: u64 = text.trim().parse().ok()?;
    (bytes < 1 << 62).then_some(bytes as usize)
}

/// Memory an open connection is counted at: ~115 KB was resident per
/// idle connection (its 64 KiB receive buffer, a 16 KiB copy buffer, a
/// frame buffer and its task; docs/benchmarks.md), more while it has
/// responses queued.
pub const CONNECTION_BYTES: usize = 128 << 10;

/// Connections per shard that a third of `limit` holds at
/// [`CONNECTION_BYTES`] each (at least 64).
pub fn connections_for_memory(limit: usize, shards: usize) -> usize {
    (limit / 3 / CONNECTION_BYTES / shards.max(1)).max(64)
}

/// Which memory settings were given (flag or config file), and so are
/// kept as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Given {
    pub memtable: bool,
    pub block_cache: bool,
    pub row_cache: bool,
}

/// The smallest sizes the budgets shrink to, per shard.
const MEMTABLE_BYTES_MIN: usize = 8 << 20;
const BLOCK_CACHE_BYTES_MIN: usize = 16 << 20;
const ROW_CACHE_BYTES_MIN: usize = 4 << 20;

/// What [`fit`] did to the budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The budgets fit a third of the limit as they are.
    Fits,
    /// The settings not given were shrunk, by the same factor, for the
    /// shards' budgets to fit a third of the limit.
    Shrunk { from_bytes: usize, to_bytes: usize },
    /// Even shrunk (to their floors, around given settings), the shards'
    /// budgets exceed a third of the limit.
    Over { budget_bytes: usize },
}

/// Shrinks the memory settings not `given` so that `shards` budgets fit
/// in a third of `limit`. The rest is for what the budgets do not count
/// and the allocator's slack: measured, one shard with a 256 MiB budget
/// under writes of 1 KB values peaked at ~390 MB of live heap (block cache
/// entries, table builders' buffers, tables' indexes and filters,
/// connection buffers, io_uring rings, the transaction timestamp cache)
/// and ~540 MB resident after 60 s with mimalloc, whose freed pages the
/// server keeps. Indexes and filters also grow with the data (~1% of
/// the tables' bytes). Given settings are never changed.
pub fn fit(opts: &mut Options, given: Given, shards: usize, limit: usize) -> Fit {
    let room = limit / 3 / shards.max(1);
    let budget = opts.memory_budget();
    if budget <= room {
        return Fit::Fits;
    }
    let memtables = opts.immutable_memtables_max + 1;
    let fixed = [
        (given.memtable, opts.memtable_bytes_max * memtables),
        (given.block_cache, opts.block_cache_bytes),
        (given.row_cache, opts.row_cache_bytes),
    ]
    .iter()
    .filter(|(given, _)| *given)
    .map(|(_, bytes)| bytes)
    .sum::<usize>();
    let shrinkable = budget - fixed;
    let factor = room.saturating_sub(fixed) as f64 / shrinkable.max(1) as f64;
    let shrink = |bytes: usize, floor: usize| ((bytes as f64 * factor) as usize).max(floor);
    let mib = |bytes: usize| bytes >> 20 << 20;
    if !given.memtable {
        opts.memtable_bytes_max = mib(shrink(opts.memtable_bytes_max, MEMTABLE_BYTES_MIN));
    }
    if !given.block_cache {
        opts.block_cache_bytes = mib(shrink(opts.block_cache_bytes, BLOCK_CACHE_BYTES_MIN));
    }
    if !given.row_cache && opts.row_cache_bytes > 0 {
        opts.row_cache_bytes = mib(shrink(opts.row_cache_bytes, ROW_CACHE_BYTES_MIN));
    }
    let after = opts.memory_budget();
    match after <= room {
        true => Fit::Shrunk {
            from_bytes: budget * shards,
            to_bytes: after * shards,
        },
        false => Fit::Over {
            budget_bytes: after * shards,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const MIB: usize = 1 << 20;

    fn files(entries: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<PathBuf, String> = entries
            .iter()
            .map(|(p, t)| (PathBuf::from(p), t.to_string()))
            .collect();
        move |p: &Path| map.get(p).cloned()
    }

    const MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn a_cgroup_v2_limit_and_its_ancestors_are_read() {
        let mounts = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let cgroups = "0::/system.slice/tessera.service\n";
        let read = files(&[
            (
                "/sys/fs/cgroup/system.slice/tessera.service/memory.max",
                "max\n",
            ),
            ("/sys/fs/cgroup/system.slice/memory.max", "2147483648\n"),
            ("/sys/fs/cgroup/memory.max", "max\n"),
        ]);
        assert_eq!(cgroup_limit(cgroups, mounts, read), Some(2 << 30));
        let read = files(&[(
            "/sys/fs/cgroup/system.slice/tessera.service/memory.max",
            "1073741824\n",
        )]);
        assert_eq!(cgroup_limit(cgroups, mounts, read), Some(1 << 30));
        // No limit anywhere.
        let read = files(&[("/sys/fs/cgroup/memory.max", "max\n")]);
        assert_eq!(cgroup_limit(cgroups, mounts, read), None);
    }

    #[test]
    fn a_cgroup_v1_memory_limit_is_read_beside_v2() {
        // This machine's layout: v1 controllers with the unified hierarchy.
        let cgroups = "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n";
        let read = files(&[
            (
                "/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes",
                "1073741824\n",
            ),
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
        ]);
        assert_eq!(cgroup_limit(cgroups, MOUNTS, read), Some(1 << 30));
        // v1 "no limit" is none.
        let read = files(&[(
            "/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes",
            "9223372036854771712\n",
        )]);
        assert_eq!(cgroup_limit(cgroups, MOUNTS, read), None);
    }

    #[test]
    fn a_container_mount_of_a_subtree_takes_the_path_relative_to_it() {
        // Docker without a cgroup namespace: the mount's root is the
        // container's cgroup, and /proc/self/cgroup names the same path.
        let mounts = "500 490 0:26 /docker/c0ffee /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw\n";
        let cgroups = "0::/docker/c0ffee\n";
        let read = files(&[("/sys/fs/cgroup/memory.max", "536870912\n")]);
        assert_eq!(cgroup_limit(cgroups, mounts, read), Some(512 * MIB));
    }

    #[test]
    fn cpus_print_as_ranges_and_this_process_has_some() {
        assert_eq!(cpu_ranges(&[0, 1, 2, 3, 6]), "0-3,6");
        assert_eq!(cpu_ranges(&[1]), "1");
        assert_eq!(cpu_ranges(&[0, 2, 4, 5]), "0,2,4-5");
        let machine = Machine::read();
        assert!(!machine.cpus.is_empty());
        assert!(machine.parallelism >= 1 && machine.parallelism <= machine.cpus.len());
    }

    #[test]
    fn connections_get_a_third_of_the_limit() {
        // 768 MiB, 2 shards: 256 MiB for connections, 1,024 per shard.
        assert_eq!(connections_for_memory(768 * MIB, 2), 1024);
        assert_eq!(connections_for_memory(24 << 30, 2), 32768);
        assert_eq!(connections_for_memory(64 * MIB, 8), 64);
    }

    #[test]
    fn the_lower_of_machine_and_cgroup_is_the_limit() {
        let limit = |total, cgroup| pick_limit(total, cgroup).map(|l| (l.bytes, l.cgroup));
        assert_eq!(limit(Some(24 << 30), Some(1 << 30)), Some((1 << 30, true)));
        assert_eq!(limit(Some(1 << 30), Some(24 << 30)), Some((1 << 30, false)));
        assert_eq!(limit(Some(1 << 30), None), Some((1 << 30, false)));
        assert_eq!(limit(None, None), None);
        let meminfo = "MemTotal:       24684084 kB\nMemAvailable:    2097152 kB\n";
        assert_eq!(meminfo_bytes(meminfo, "MemTotal:"), Some(24684084 << 10));
        assert_eq!(meminfo_bytes(meminfo, "MemAvailable:"), Some(2 << 30));
        assert_eq!(meminfo_bytes("MemTotal: 1 kB\n", "MemAvailable:"), None);
    }

    #[test]
    fn budgets_shrink_to_a_third_of_the_limit_and_given_settings_stay() {
        let defaults = Options::default();
        // 2 shards of 512 MiB on 24 GiB: untouched.
        let mut opts = defaults.clone();
        assert_eq!(fit(&mut opts, Given::default(), 2, 24 << 30), Fit::Fits);
        assert_eq!(opts.memory_budget(), defaults.memory_budget());
        // In 1.5 GiB, 2 shards get 256 MiB each: every setting halved.
        let mut opts = defaults.clone();
        assert_eq!(
            fit(&mut opts, Given::default(), 2, 1536 * MIB),
            Fit::Shrunk {
                from_bytes: 1 << 30,
                to_bytes: 512 * MIB
            }
        );
        assert_eq!(opts.memtable_bytes_max, 32 * MIB);
        assert_eq!(opts.block_cache_bytes, 128 * MIB);
        assert_eq!(opts.row_cache_bytes, 32 * MIB);
        opts.validate().unwrap();
        // A given block cache stays; the rest shrinks around it, each
        // setting rounded down to whole MiB.
        let given = Given {
            block_cache: true,
            ..Given::default()
        };
        let mut opts = defaults.clone();
        assert!(matches!(
            fit(&mut opts, given, 3, 3 << 30),
            Fit::Shrunk { to_bytes, .. } if to_bytes <= 1 << 30
        ));
        assert_eq!(opts.block_cache_bytes, 256 * MIB);
        assert_eq!(opts.memtable_bytes_max, 21 * MIB);
        assert_eq!(opts.row_cache_bytes, 21 * MIB);
        // When a given setting alone takes the room, the rest go to their
        // floors and the result is said to be over.
        let mut opts = defaults.clone();
        assert_eq!(
            fit(&mut opts, given, 2, 1536 * MIB),
            Fit::Over {
                budget_bytes: 2 * (256 + 4 + 3 * 8) * MIB
            }
        );
        // A turned-off row cache stays off.
        let mut opts = Options {
            row_cache_bytes: 0,
            ..defaults.clone()
        };
        fit(&mut opts, Given::default(), 2, 1 << 30);
        assert_eq!(opts.row_cache_bytes, 0);
        // Too little even at the floors: said so.
        let mut opts = defaults.clone();
        assert_eq!(
            fit(&mut opts, Given::default(), 8, 384 * MIB),
            Fit::Over {
                budget_bytes: 8 * (16 + 4 + 3 * 8) * MIB
            }
        );
    }
}
