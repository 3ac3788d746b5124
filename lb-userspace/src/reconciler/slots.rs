//! Slot layout: which backend id sits in which slot of a service.

use std::collections::HashSet;

/// Lays `wanted` backend ids out over slots (index `i` is slot `i + 1`), keeping every backend
/// that stays at its current slot so that a change rewrites as few slots as possible.
///
/// Slots freed by removed backends are refilled by new backends first; remaining holes are
/// closed by moving the last slots into them, and further new backends are appended.
pub(crate) fn stable_layout(current: &[u32], wanted: &[u32]) -> Vec<u32> {
    let wanted_set: HashSet<u32> = wanted.iter().copied().collect();
    let kept: HashSet<u32> = current
        .iter()
        .copied()
        .filter(|id| wanted_set.contains(id))
        .collect();
    let mut fresh = wanted.iter().copied().filter(|id| !kept.contains(id));

    let mut layout: Vec<Option<u32>> = current
        .iter()
        .map(|id| match kept.contains(id) {
            true => Some(*id),
            false => fresh.next(),
        })
        .collect();
    layout.extend(fresh.map(Some));
    while let Some(hole) = layout.iter().position(Option::is_none) {
        layout.swap_remove(hole);
    }
    layout.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::stable_layout;

    #[test]
    fn new_service_takes_wanted_order() {
        assert_eq!(stable_layout(&[], &[4, 2, 9]), vec![4, 2, 9]);
    }

    #[test]
    fn added_backend_is_appended() {
        assert_eq!(stable_layout(&[1, 2], &[1, 2, 3]), vec![1, 2, 3]);
        assert_eq!(stable_layout(&[2, 1], &[1, 2, 3]), vec![2, 1, 3]);
    }

    #[test]
    fn replaced_backend_takes_the_freed_slot() {
        assert_eq!(stable_layout(&[1, 2, 3], &[1, 3, 7]), vec![1, 7, 3]);
    }

    #[test]
    fn removal_moves_the_last_slot_into_the_hole() {
        assert_eq!(stable_layout(&[1, 2, 3, 4], &[1, 3, 4]), vec![1, 4, 3]);
        assert_eq!(stable_layout(&[1, 2, 3, 4], &[1, 2, 3]), vec![1, 2, 3]);
        assert_eq!(stable_layout(&[1, 2, 3, 4], &[4]), vec![4]);
        assert_eq!(stable_layout(&[1, 2], &[]), Vec::<u32>::new());
    }
}
