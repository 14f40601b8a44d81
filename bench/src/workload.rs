//! What the load generator asks for: operation mixes (YCSB core workloads
//! A-F, `set`, `get`, `txn`, `mixed:<read%>`), key distributions (uniform,
//! zipfian, latest) and key and value shapes.
//!
//! The zipfian generator is YCSB's (Gray et al., "Quickly generating
//! billion-record synthetic databases"), with its item order scrambled by
//! a hash so hot keys spread over the keyspace (and over shards).

use anyhow::{bail, Context};
use rand::Rng;
use std::str::FromStr;

/// One operation kind; each gets its own latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Read,
    Update,
    Insert,
    Scan,
    ReadModifyWrite,
    /// A transaction writing two keys on two different shards.
    Txn,
    /// A round trip that touches no data: the cost of the request path
    /// alone (Redis `PING`).
    Ping,
}

impl OpKind {
    pub const ALL: [OpKind; 7] = [
        OpKind::Read,
        OpKind::Update,
        OpKind::Insert,
        OpKind::Scan,
        OpKind::ReadModifyWrite,
        OpKind::Txn,
        OpKind::Ping,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::Scan => "scan",
            OpKind::ReadModifyWrite => "rmw",
            OpKind::Txn => "txn",
            OpKind::Ping => "ping",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    Uniform,
    Zipfian,
    Latest,
}

impl FromStr for Distribution {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "uniform" => Distribution::Uniform,
            "zipfian" => Distribution::Zipfian,
            "latest" => Distribution::Latest,
            _ => bail!("unknown distribution {s:?} (uniform, zipfian, latest)"),
        })
    }
}

/// Proportions of each operation (summing to 1) and the default key
/// distribution of a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub name: String,
    pub mix: Vec<(OpKind, f64)>,
    pub distribution: Distribution,
}

impl FromStr for Workload {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        use OpKind::*;
        let (mix, distribution) = match s {
            "set" => (vec![(Update, 1.0)], Distribution::Uniform),
            "get" => (vec![(Read, 1.0)], Distribution::Uniform),
            "txn" => (vec![(Txn, 1.0)], Distribution::Uniform),
            "ping" => (vec![(Ping, 1.0)], Distribution::Uniform),
            "a" | "ycsb-a" => (vec![(Read, 0.5), (Update, 0.5)], Distribution::Zipfian),
            "b" | "ycsb-b" => (vec![(Read, 0.95), (Update, 0.05)], Distribution::Zipfian),
            "c" | "ycsb-c" => (vec![(Read, 1.0)], Distribution::Zipfian),
            "d" | "ycsb-d" => (vec![(Read, 0.95), (Insert, 0.05)], Distribution::Latest),
            "e" | "ycsb-e" => (vec![(Scan, 0.95), (Insert, 0.05)], Distribution::Zipfian),
            "f" | "ycsb-f" => (
                vec![(Read, 0.5), (ReadModifyWrite, 0.5)],
                Distribution::Zipfian,
            ),
            _ => match s.strip_prefix("mixed:") {
                Some(p) => {
                    let read: f64 = p.parse().with_context(|| format!("workload {s:?}"))?;
                    if !(0.0..=100.0).contains(&read) {
                        bail!("mixed:<read%> needs 0..=100, got {read}");
                    }
                    (
                        vec![(Read, read / 100.0), (Update, 1.0 - read / 100.0)],
                        Distribution::Uniform,
                    )
                }
                None => {
                    bail!(
                        "unknown workload {s:?} (set, get, txn, ping, mixed:<read%>, ycsb-a .. ycsb-f)"
                    )
                }
            },
        };
        Ok(Workload {
            name: s.to_string(),
            mix,
            distribution,
        })
    }
}

impl Workload {
    pub fn pick(&self, rng: &mut impl Rng) -> OpKind {
        let mut x: f64 = rng.gen();
        for (op, p) in &self.mix {
            if x < *p {
                return *op;
            }
            x -= p;
        }
        self.mix.last().expect("non-empty mix").0
    }
}

/// YCSB's zipfian generator over `[0, n)` with constant `theta`.
#[derive(Debug, Clone)]
pub struct Zipfian {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

impl Zipfian {
    pub fn new(n: u64, theta: f64) -> Zipfian {
        assert!(n >= 2);
        let zetan = zeta(n, theta);
        let zeta2 = zeta(2, theta);
        Zipfian {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan),
        }
    }

    /// Item rank: 0 is the most popular.
    pub fn next_rank(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.gen();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        ((self.n as f64) * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64 % self.n
    }
}

/// Picks key indexes for one thread.
#[derive(Debug, Clone)]
pub struct KeyChooser {
    distribution: Distribution,
    zipf: Option<Zipfian>,
    /// Keys `[0, inserted)` exist; inserts take the next index.
    pub inserted: u64,
}

impl KeyChooser {
    pub fn new(distribution: Distribution, keys: u64) -> KeyChooser {
        let zipf = (distribution != Distribution::Uniform).then(|| Zipfian::new(keys.max(2), 0.99));
        KeyChooser {
            distribution,
            zipf,
            inserted: keys,
        }
    }

    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        let n = self.inserted.max(1);
        match self.distribution {
            Distribution::Uniform => rng.gen_range(0..n),
            Distribution::Zipfian => {
                let rank = self.zipf.as_ref().expect("zipfian").next_rank(rng);
                scramble(rank) % n
            }
            Distribution::Latest => {
                let rank = self.zipf.as_ref().expect("zipfian").next_rank(rng);
                n - 1 - rank.min(n - 1)
            }
        }
    }
}

/// FNV-1a of the rank: spreads popular ranks over the keyspace.
fn scramble(rank: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rank.to_le_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Key number `i` as `key_size` bytes: `k` then zero-padded decimal.
/// Formatted with `itoa`: `format!` was ~4% of the load generator's CPU
/// in a transaction run (three keys drawn per transaction).
pub fn key(i: u64, key_size: usize) -> Vec<u8> {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(i).as_bytes();
    let mut k = Vec::with_capacity(key_size.max(digits.len() + 1));
    k.push(b'k');
    k.resize(key_size.saturating_sub(digits.len()).max(1), b'0');
    k.extend_from_slice(digits);
    k
}

/// Value sizes: fixed or uniform in a range (`100` or `64-1024`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueSize {
    pub min: usize,
    pub max: usize,
}

impl FromStr for ValueSize {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (a.parse()?, b.parse()?),
            None => {
                let v = s.parse()?;
                (v, v)
            }
        };
        if min > max {
            bail!("value size range {s:?} is backwards");
        }
        Ok(ValueSize { min, max })
    }
}

impl ValueSize {
    pub fn next(&self, rng: &mut impl Rng) -> usize {
        rng.gen_range(self.min..=self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn workload_mixes_match_their_documented_proportions() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for (name, op, want) in [
            ("ycsb-a", OpKind::Read, 0.5),
            ("ycsb-b", OpKind::Read, 0.95),
            ("ycsb-d", OpKind::Insert, 0.05),
            ("ycsb-e", OpKind::Scan, 0.95),
            ("ycsb-f", OpKind::ReadModifyWrite, 0.5),
            ("mixed:80", OpKind::Read, 0.8),
        ] {
            let w: Workload = name.parse().unwrap();
            let n = 100_000;
            let hits = (0..n).filter(|_| w.pick(&mut rng) == op).count() as f64 / n as f64;
            // 5 standard deviations of a binomial proportion.
            let tolerance = 5.0 * (want * (1.0 - want) / n as f64).sqrt();
            assert!((hits - want).abs() <= tolerance, "{name}: {hits} vs {want}");
        }
    }

    #[test]
    fn zipfian_is_skewed_like_ycsb_and_uniform_is_flat() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let n = 1000u64;
        let z = Zipfian::new(n, 0.99);
        let samples = 200_000;
        let mut counts = vec![0u64; n as usize];
        for _ in 0..samples {
            counts[z.next_rank(&mut rng) as usize] += 1;
        }
        // Theory: P(rank 0) = 1/zeta(n, 0.99) ≈ 0.134 for n = 1000.
        let p0 = counts[0] as f64 / samples as f64;
        let want = 1.0 / zeta(n, 0.99);
        assert!((p0 - want).abs() < 0.01, "p(rank 0) {p0} vs {want}");
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[500]);
        let u = KeyChooser::new(Distribution::Uniform, n);
        let mut counts = vec![0u64; n as usize];
        for _ in 0..samples {
            counts[u.next(&mut rng) as usize] += 1;
        }
        let expected = samples as f64 / n as f64;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        // 999 degrees of freedom: the 99.9th percentile is ~1143.
        assert!(chi2 < 1143.0, "chi2 {chi2}");
    }

    #[test]
    fn latest_favours_the_newest_keys() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut c = KeyChooser::new(Distribution::Latest, 10_000);
        c.inserted = 20_000;
        let newest = (0..10_000).filter(|_| c.next(&mut rng) >= 19_900).count();
        assert!(
            newest > 3_000,
            "{newest} of 10000 reads hit the newest 100 keys"
        );
    }

    #[test]
    fn keys_have_the_requested_size_and_are_distinct() {
        assert_eq!(key(42, 16), b"k000000000000042".to_vec());
        assert_eq!(key(7, 2), b"k7".to_vec());
        assert_ne!(key(1, 16), key(10, 16));
        assert_eq!(
            "64-128".parse::<ValueSize>().unwrap(),
            ValueSize { min: 64, max: 128 }
        );
    }
}
