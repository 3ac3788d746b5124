//! Dense id allocation with a free list; id 0 is never handed out.

use std::collections::BTreeSet;

/// Hands out ids `1..=capacity`, reusing the smallest released id first so ids stay dense.
#[derive(Debug)]
pub(crate) struct IdPool {
    capacity: u32,
    next_unused: u32,
    released: BTreeSet<u32>,
}

impl IdPool {
    pub(crate) fn new(capacity: u32) -> Self {
        Self {
            capacity,
            next_unused: 1,
            released: BTreeSet::new(),
        }
    }

    /// A pool in which `used` (each in `1..=capacity`) are allocated and every other id is
    /// free: the pool of a reconciler that adopted these ids from the maps.
    pub(crate) fn with_used(capacity: u32, used: impl IntoIterator<Item = u32>) -> Self {
        let used: BTreeSet<u32> = used.into_iter().collect();
        let next_unused = used.last().map_or(1, |max| max + 1);
        Self {
            capacity,
            next_unused,
            released: (1..next_unused).filter(|id| !used.contains(id)).collect(),
        }
    }

    pub(crate) fn capacity(&self) -> u32 {
        self.capacity
    }

    /// How many ids [`IdPool::allocate`] can still hand out.
    pub(crate) fn available(&self) -> u32 {
        let never_used = self.capacity.saturating_sub(self.next_unused - 1);
        never_used + self.released.len() as u32
    }

    pub(crate) fn allocate(&mut self) -> Option<u32> {
        if let Some(id) = self.released.pop_first() {
            return Some(id);
        }
        if self.next_unused > self.capacity {
            return None;
        }
        let id = self.next_unused;
        self.next_unused += 1;
        Some(id)
    }

    pub(crate) fn release(&mut self, id: u32) {
        debug_assert!(
            id != 0 && id < self.next_unused,
            "releasing unallocated id {id}"
        );
        self.released.insert(id);
    }
}

#[cfg(test)]
mod tests {
    use super::IdPool;

    #[test]
    fn ids_start_at_one_and_reuse_the_smallest_released() {
        let mut pool = IdPool::new(3);
        assert_eq!(pool.available(), 3);
        assert_eq!(pool.allocate(), Some(1));
        assert_eq!(pool.allocate(), Some(2));
        assert_eq!(pool.allocate(), Some(3));
        assert_eq!(pool.allocate(), None);
        assert_eq!(pool.available(), 0);
        pool.release(3);
        pool.release(1);
        assert_eq!(pool.available(), 2);
        assert_eq!(pool.allocate(), Some(1));
        assert_eq!(pool.allocate(), Some(3));
        assert_eq!(pool.allocate(), None);
    }

    #[test]
    fn adopted_ids_stay_allocated_and_the_gaps_are_free() {
        let mut pool = IdPool::with_used(5, [4, 2]);
        assert_eq!(pool.available(), 3);
        assert_eq!(pool.allocate(), Some(1));
        assert_eq!(pool.allocate(), Some(3));
        assert_eq!(pool.allocate(), Some(5));
        assert_eq!(pool.allocate(), None);
        let mut empty = IdPool::with_used(2, []);
        assert_eq!(empty.allocate(), Some(1));
    }
}
