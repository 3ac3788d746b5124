//! The objects in effect, shared by both sources (manifest files and the API server).
//!
//! Bad input never removes what is programmed: an object version that cannot be programmed is
//! skipped and the object's last valid version stays in effect; only a deletion (or an
//! object no longer listed) removes it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Namespace and name of an object (the namespace is empty for cluster-scoped kinds).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// A field of a Kubernetes object that cannot be programmed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// Path of the field, e.g. `spec.ports[1].port`.
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// An object that cannot be programmed: which one, where it came from and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}{kind} {namespace}/{name}: {error}",
    file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default()
)]
pub struct ObjectError {
    /// The manifest file it was read from; `None` for objects from the API server.
    pub file: Option<PathBuf>,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub error: FieldError,
}

/// An object version that was skipped; its last valid version, if any, stays in effect.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{error} (object skipped{})",
    if *kept_previous { "; its last valid version stays in effect" } else { "" }
)]
pub struct SkippedObject {
    pub error: ObjectError,
    pub kept_previous: bool,
}

/// Objects of one kind, each in its last valid version.
#[derive(Debug)]
pub struct LastValid<T> {
    objects: BTreeMap<ObjectKey, T>,
    /// Objects whose latest version was skipped.
    invalid: BTreeSet<ObjectKey>,
}

impl<T> Default for LastValid<T> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            invalid: BTreeSet::new(),
        }
    }
}

impl<T> LastValid<T> {
    /// An object was added or changed: a valid version takes effect; an invalid one is
    /// returned as skipped and the last valid version (if any) stays in effect.
    pub fn upsert(
        &mut self,
        key: ObjectKey,
        parsed: Result<T, ObjectError>,
    ) -> Option<SkippedObject> {
        match parsed {
            Ok(object) => {
                self.invalid.remove(&key);
                self.objects.insert(key, object);
                None
            }
            Err(error) => {
                let kept_previous = self.objects.contains_key(&key);
                self.invalid.insert(key);
                Some(SkippedObject {
                    error,
                    kept_previous,
                })
            }
        }
    }

    /// An object was deleted.
    pub fn remove(&mut self, key: &ObjectKey) {
        self.objects.remove(key);
        self.invalid.remove(key);
    }

    /// The complete current list (a relist, a re-read directory): each listed object as with
    /// [`LastValid::upsert`]; objects not listed are gone. Returns the skipped versions.
    pub fn replace_all(
        &mut self,
        listed: impl IntoIterator<Item = (ObjectKey, Result<T, ObjectError>)>,
    ) -> Vec<SkippedObject> {
        let mut previous = std::mem::take(&mut self.objects);
        self.invalid.clear();
        let mut skipped = Vec::new();
        for (key, parsed) in listed {
            if let Some(last_valid) = previous.remove(&key) {
                self.objects.insert(key.clone(), last_valid);
            }
            skipped.extend(self.upsert(key, parsed));
        }
        skipped
    }

    /// The object in effect under `key`.
    pub fn get(&self, key: &ObjectKey) -> Option<&T> {
        self.objects.get(key)
    }

    /// The objects in effect, with their keys.
    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, &T)> {
        self.objects.iter()
    }

    /// The objects in effect, by key.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.objects.values()
    }

    /// How many objects are in effect.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether no object is in effect.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// How many objects' latest version is invalid (each skipped, its last valid version
    /// still in effect if it had one).
    pub fn invalid_count(&self) -> usize {
        self.invalid.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(name: &str) -> ObjectError {
        ObjectError {
            file: None,
            kind: "Service".into(),
            namespace: "shop".into(),
            name: name.into(),
            error: FieldError::new("spec.ports[0].port", "70000 is not a port (1..=65535)"),
        }
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("shop", name)
    }

    #[test]
    fn an_invalid_version_keeps_the_last_valid_one_until_fixed_or_deleted() {
        let mut store = LastValid::default();
        assert_eq!(store.upsert(key("web"), Ok(1)), None);
        let skipped = store.upsert(key("web"), Err(bad("web"))).unwrap();
        assert_eq!(
            skipped.to_string(),
            "Service shop/web: spec.ports[0].port: 70000 is not a port (1..=65535) (object \
             skipped; its last valid version stays in effect)"
        );
        assert_eq!(store.values().collect::<Vec<_>>(), [&1]);
        assert_eq!(store.invalid_count(), 1);

        let never_valid = store.upsert(key("api"), Err(bad("api"))).unwrap();
        assert!(!never_valid.kept_previous);
        assert_eq!(store.len(), 1);
        assert_eq!(store.invalid_count(), 2);

        assert_eq!(store.upsert(key("web"), Ok(2)), None);
        assert_eq!(store.values().collect::<Vec<_>>(), [&2]);
        store.remove(&key("api"));
        assert_eq!(store.invalid_count(), 0);
    }

    #[test]
    fn replace_all_drops_unlisted_objects_and_keeps_last_valid_versions() {
        let mut store = LastValid::default();
        store.replace_all([(key("a"), Ok(1)), (key("b"), Ok(2)), (key("c"), Ok(3))]);
        let skipped = store.replace_all([(key("a"), Err(bad("a"))), (key("c"), Ok(30))]);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].kept_previous);
        assert_eq!(store.values().collect::<Vec<_>>(), [&1, &30]);
        assert_eq!(store.invalid_count(), 1);
        store.replace_all([(key("c"), Ok(30))]);
        assert_eq!(store.values().collect::<Vec<_>>(), [&30]);
        assert_eq!(store.invalid_count(), 0);
    }
}
