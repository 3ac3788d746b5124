//! A map keyed by dense ids (`1..=capacity`, as [`super::ids::IdPool`] hands them out), stored
//! as a vector indexed by id: for hundreds of thousands of backends it takes about half a
//! BTreeMap's memory, with no node allocations, and still iterates in id order.

/// Values by dense id.
#[derive(Debug)]
pub(super) struct IdMap<T> {
    slots: Vec<Option<T>>,
    len: usize,
}

impl<T> Default for IdMap<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<T> IdMap<T> {
    pub(super) fn get(&self, id: &u32) -> Option<&T> {
        self.slots.get(*id as usize)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, id: &u32) -> Option<&mut T> {
        self.slots.get_mut(*id as usize)?.as_mut()
    }

    /// Sets `id`'s value; returns the one it replaces.
    pub(super) fn insert(&mut self, id: u32, value: T) -> Option<T> {
        let index = id as usize;
        if index >= self.slots.len() {
            self.slots.resize_with(index + 1, || None);
        }
        let old = self.slots[index].replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub(super) fn remove(&mut self, id: &u32) -> Option<T> {
        let old = self.slots.get_mut(*id as usize)?.take();
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Every id with its value, in id order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &T)> + '_ {
        (0u32..)
            .zip(&self.slots)
            .filter_map(|(id, value)| value.as_ref().map(|value| (id, value)))
    }
}

impl<T> FromIterator<(u32, T)> for IdMap<T> {
    fn from_iter<I: IntoIterator<Item = (u32, T)>>(values: I) -> Self {
        let mut map = IdMap::default();
        for (id, value) in values {
            map.insert(id, value);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_kept_by_id_and_counted() {
        let mut map: IdMap<&str> = [(3, "c"), (1, "a")].into_iter().collect();
        assert_eq!(map.len(), 2);
        assert_eq!(map.get(&3), Some(&"c"));
        assert_eq!(map.get(&2), None);
        assert_eq!(map.get(&99), None);
        assert_eq!(map.insert(3, "C"), Some("c"));
        assert_eq!(map.len(), 2);
        *map.get_mut(&1).unwrap() = "A";
        assert_eq!(map.iter().collect::<Vec<_>>(), [(1, &"A"), (3, &"C")]);
        assert_eq!(map.remove(&1), Some("A"));
        assert_eq!(map.remove(&1), None);
        assert_eq!(map.remove(&7), None);
        assert_eq!(map.len(), 1);
    }
}
