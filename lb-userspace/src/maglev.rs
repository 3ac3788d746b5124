//! Maglev consistent hashing (Eisenbud et al., NSDI 2016; as Cilium's `pkg/maglev`): a
//! lookup table of a prime size `M` whose every entry names one backend, so that a flow's
//! backend is `table[flow_hash % M]`.
//!
//! The table depends only on the set of backend addresses and ports, never on node-local ids
//! or on the order they arrive in, so every node computes the same table for the same
//! endpoints; and removing one of `N` backends changes only about `M / N` entries (those it
//! held), so about `1 / N` of new-flow choices move.

use std::fmt;
use std::net::IpAddr;

use crate::model::map_addr;

/// The table size unless `--maglev-table-size` says otherwise.
pub const DEFAULT_TABLE_SIZE: u32 = 1021;
/// The largest table size accepted (Cilium's largest, 2^17 - 1).
pub const MAX_TABLE_SIZE: u32 = 131_071;

/// A valid Maglev table size: a prime between 3 and [`MAX_TABLE_SIZE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSize(u32);

impl TableSize {
    pub const DEFAULT: TableSize = TableSize(DEFAULT_TABLE_SIZE);

    pub fn new(size: u32) -> Result<TableSize, TableSizeError> {
        match (3..=MAX_TABLE_SIZE).contains(&size) && is_prime(size) {
            true => Ok(TableSize(size)),
            false => Err(TableSizeError(size)),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for TableSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for TableSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let size: u32 = s
            .parse()
            .map_err(|_| format!("{s:?} is not a table size (a prime number)"))?;
        TableSize::new(size).map_err(|e| e.to_string())
    }
}

/// A table size that is not a prime in range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSizeError(pub u32);

impl fmt::Display for TableSizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Maglev table size {} is not a prime between 3 and {MAX_TABLE_SIZE} \
             (for example 251, 1021, 4093, 16381 or 65521)",
            self.0
        )
    }
}

impl std::error::Error for TableSizeError {}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The Maglev table of `size` entries over `backends` (address and port each): entry `i`
/// is an index into `backends`. Empty without backends. Order and duplicates of `backends`
/// do not matter beyond the indexes returned.
pub fn table(backends: &[(IpAddr, u16)], size: TableSize) -> Vec<usize> {
    let m = u64::from(size.get());
    if backends.is_empty() {
        return Vec::new();
    }
    // Fill in the order of the backends' identities, so ties break the same on every node.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_key(|&i| (map_addr(backends[i].0), backends[i].1));
    order.dedup_by_key(|i| backends[*i]);
    let permutation: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let id = identity(backends[i]);
            let offset = hash(OFFSET_SEED, &id) % m;
            let skip = hash(SKIP_SEED, &id) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    let mut entries = vec![usize::MAX; m as usize];
    let mut filled = 0;
    loop {
        for (n, &backend) in order.iter().enumerate() {
            let (offset, skip) = permutation[n];
            let mut c = (offset + next[n] * skip) % m;
            while entries[c as usize] != usize::MAX {
                next[n] += 1;
                c = (offset + next[n] * skip) % m;
            }
            entries[c as usize] = backend;
            next[n] += 1;
            filled += 1;
            if filled == m {
                return entries;
            }
        }
    }
}

const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66;
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b;

/// A backend's identity as hashed: its 16-byte map address and its port, network order.
fn identity((addr, port): (IpAddr, u16)) -> [u8; 18] {
    let mut id = [0u8; 18];
    id[..16].copy_from_slice(&map_addr(addr));
    id[16..].copy_from_slice(&port.to_be_bytes());
    id
}

/// FNV-1a from `seed`, then SplitMix64's finalizer: fixed, so the same on every node and
/// every build (unlike std's `DefaultHasher`, whose algorithm may change).
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed ^ 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u8) -> Vec<(IpAddr, u16)> {
        (1..=n)
            .map(|i| (IpAddr::from([198, 18, 1, i]), 8080))
            .collect()
    }

    fn named(table: &[usize], backends: &[(IpAddr, u16)]) -> Vec<(IpAddr, u16)> {
        table.iter().map(|i| backends[*i]).collect()
    }

    #[test]
    fn only_primes_in_range_are_table_sizes() {
        for size in [3, 251, 1021, 4093, 16381, 65521, MAX_TABLE_SIZE] {
            assert_eq!(TableSize::new(size).map(TableSize::get), Ok(size));
        }
        for size in [0, 1, 2, 1000, 65535, 131_073] {
            assert_eq!(TableSize::new(size), Err(TableSizeError(size)));
        }
        assert!(is_prime(DEFAULT_TABLE_SIZE));
        let error = "1000".parse::<TableSize>().unwrap_err();
        assert!(error.contains("1000 is not a prime"), "{error}");
        assert!(!error.contains('\n'));
        assert!("many"
            .parse::<TableSize>()
            .unwrap_err()
            .contains("\"many\""));
    }

    #[test]
    fn every_entry_names_a_backend_and_each_gets_a_fair_share() {
        let size = TableSize::new(1021).unwrap();
        let set = backends(7);
        let entries = table(&set, size);
        assert_eq!(entries.len(), 1021);
        let mut counts = [0usize; 7];
        for i in &entries {
            counts[*i] += 1;
        }
        // Maglev fills round-robin: shares differ by at most one entry per round.
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 1, "{counts:?}");
        assert!(table(&[], size).is_empty());
        let one = table(&set[..1], size);
        assert!(one.iter().all(|i| *i == 0));
    }

    #[test]
    fn the_table_depends_only_on_the_set_not_its_order() {
        let size = TableSize::new(251).unwrap();
        let set = backends(5);
        let mut reversed = set.clone();
        reversed.reverse();
        assert_eq!(
            named(&table(&set, size), &set),
            named(&table(&reversed, size), &reversed)
        );
        let mut doubled = set.clone();
        doubled.extend(set.iter().copied());
        assert_eq!(
            named(&table(&doubled, size), &doubled),
            named(&table(&set, size), &set)
        );
    }

    #[test]
    fn removing_one_of_five_moves_about_a_fifth_of_entries() {
        let size = TableSize::new(16381).unwrap();
        let five = backends(5);
        let before = named(&table(&five, size), &five);
        let four = [&five[..2], &five[3..]].concat();
        let after = named(&table(&four, size), &four);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let held_by_removed = before.iter().filter(|b| **b == five[2]).count();
        // Every entry of the removed backend moves, and few others do.
        assert!(moved >= held_by_removed);
        let share = moved as f64 / f64::from(size.get());
        assert!(share < 0.25, "{moved} of {} entries moved", size.get());
        // A different port is a different backend, and gets a different permutation.
        let other_port = [(five[0].0, 9090)];
        assert_eq!(
            hash(OFFSET_SEED, &identity(five[0])),
            hash(OFFSET_SEED, &identity(five[0]))
        );
        assert_ne!(identity(five[0]), identity(other_port[0]));
    }
}
