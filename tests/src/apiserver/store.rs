//! The object store behind the server: objects by resource, namespace and name; one global
//! resourceVersion bumped by every change; a bounded history of changes that watches resume
//! from and paginated or exact-version lists are served from; the open watches.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use bytes::Bytes;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::{
    selector::{FieldSelector, LabelSelector},
    ApiError, Resource,
};

/// Where an object lives; cluster-scoped objects have an empty namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub resource: Resource,
    pub namespace: String,
    pub name: String,
}

/// Which objects a list or watch covers.
#[derive(Clone, Debug)]
pub struct Filter {
    pub resource: Resource,
    /// `None` for all namespaces (and for cluster-scoped resources).
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    fn matches(&self, key: &Key, object: &Value) -> bool {
        key.resource == self.resource
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == key.namespace)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    fn has_selectors(&self) -> bool {
        self.labels != LabelSelector::default() || self.fields != FieldSelector::default()
    }
}

/// One change in the history.
#[derive(Debug)]
struct Change {
    rv: u64,
    key: Key,
    /// The object after the change; `None` when it was deleted.
    object: Option<Arc<Value>>,
    /// The object before the change; `None` when it was created.
    previous: Option<Arc<Value>>,
}

/// A list request after parameter checks.
#[derive(Debug)]
pub struct ListQuery {
    pub filter: Filter,
    /// Serve the state at exactly this version (`resourceVersionMatch=Exact`, continuations).
    pub exact: Option<u64>,
    /// The state must be at least this new (`resourceVersion` with `NotOlderThan` or legacy).
    pub not_older_than: Option<u64>,
    pub limit: Option<usize>,
    /// A continue token from an earlier page.
    pub continue_token: Option<String>,
}

/// One page of a list.
#[derive(Debug)]
pub struct ListPage {
    /// The version the page (and all its continuations) shows.
    pub resource_version: u64,
    pub items: Vec<Arc<Value>>,
    pub continue_token: Option<String>,
    /// Items after this page, when the list has no selectors (as the real server reports).
    pub remaining: Option<usize>,
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug)]
pub enum WatchStart {
    /// Synthetic ADDED events for the current state, then changes; with `initial_events_end`
    /// a BOOKMARK annotated `k8s.io/initial-events-end` follows the ADDED events
    /// (`sendInitialEvents=true`).
    Current { initial_events_end: bool },
    /// Every change after this version, from the history (or 410 Gone when compacted).
    After(u64),
}

/// An open watch.
struct Watcher {
    filter: Filter,
    bookmarks: bool,
    events: UnboundedSender<Bytes>,
}

/// The store.
pub struct Store {
    resource_version: u64,
    /// Changes at or below this version are no longer in the history.
    compacted: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Change>,
    history_limit: usize,
    watchers: Vec<Watcher>,
    next_uid: u64,
    /// ERROR events with code 410 sent to watches, for tests.
    gone_sent: usize,
}

impl Store {
    /// An empty store at resourceVersion 1 keeping the last `history_limit` changes.
    pub fn new(history_limit: usize) -> Store {
        Store {
            resource_version: 1,
            compacted: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit,
            watchers: Vec::new(),
            next_uid: 1,
            gone_sent: 0,
        }
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// The object at `key`.
    pub fn get(&self, key: &Key) -> Option<Arc<Value>> {
        self.objects.get(key).cloned()
    }

    /// Stores a new object; fails if one with its name exists.
    pub fn create(
        &mut self,
        resource: Resource,
        mut object: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let key = key_of(resource, &mut object)?;
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&key));
        }
        let uid = format!("00000000-0000-4000-8000-{:012x}", self.next_uid);
        self.next_uid += 1;
        object["metadata"]["uid"] = Value::String(uid);
        clear_deletion_timestamp(&mut object);
        Ok(self
            .commit(key, Some(object))
            .expect("a created object exists"))
    }

    /// Replaces an existing object (spec, status and metadata as given; the uid is kept). A
    /// non-empty `metadata.resourceVersion` must be the current one (optimistic
    /// concurrency). A replacement that changes nothing keeps the version and sends no event.
    pub fn replace(
        &mut self,
        resource: Resource,
        mut object: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let key = key_of(resource, &mut object)?;
        let current = self
            .objects
            .get(&key)
            .ok_or_else(|| ApiError::not_found(&key))?;
        let expected = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        let actual = current
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        if expected.is_some_and(|e| !e.is_empty() && Some(e) != actual) {
            return Err(ApiError::conflict(&key));
        }
        object["metadata"]["uid"] = current["metadata"]["uid"].clone();
        // Only a delete sets the deletion timestamp; an object being deleted goes with its
        // last finalizer.
        match current.pointer(DELETION_TIMESTAMP) {
            Some(since) => object["metadata"]["deletionTimestamp"] = since.clone(),
            None => clear_deletion_timestamp(&mut object),
        }
        if object.pointer(DELETION_TIMESTAMP).is_some() && !has_finalizers(&object) {
            self.commit(key, None);
            return Ok(Arc::new(at_version(&object, self.resource_version)));
        }
        self.commit_if_changed(key, object)
    }

    /// Replaces the `status` of an existing object.
    pub fn replace_status(&mut self, key: &Key, status: Value) -> Result<Arc<Value>, ApiError> {
        let current = self
            .objects
            .get(key)
            .ok_or_else(|| ApiError::not_found(key))?;
        let mut object = Value::clone(current);
        object["status"] = status;
        self.commit_if_changed(key.clone(), object)
    }

    /// Deletes an object and returns its last state. One with finalizers is only marked, as
    /// the real API server does: its `metadata.deletionTimestamp` is set (a MODIFIED event),
    /// and it goes once a replacement leaves it without finalizers.
    pub fn delete(&mut self, key: &Key) -> Result<Arc<Value>, ApiError> {
        let last = self.get(key).ok_or_else(|| ApiError::not_found(key))?;
        if !has_finalizers(&last) {
            self.commit(key.clone(), None);
            return Ok(Arc::new(at_version(&last, self.resource_version)));
        }
        if last.pointer(DELETION_TIMESTAMP).is_some() {
            return Ok(last);
        }
        let mut marked = Value::clone(&last);
        let now = Timestamp::from_second(Timestamp::now().as_second()).expect("now is in range");
        marked["metadata"]["deletionTimestamp"] = Value::String(now.to_string());
        Ok(self
            .commit(key.clone(), Some(marked))
            .expect("a marked object exists"))
    }

    fn commit_if_changed(&mut self, key: Key, mut object: Value) -> Result<Arc<Value>, ApiError> {
        let current = self.objects.get(&key).expect("checked by the caller");
        object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if *current.as_ref() == object {
            return Ok(current.clone());
        }
        Ok(self
            .commit(key, Some(object))
            .expect("a replaced object exists"))
    }

    /// Applies one change at the next version: stores it, records it and tells the watches.
    fn commit(&mut self, key: Key, object: Option<Value>) -> Option<Arc<Value>> {
        self.resource_version += 1;
        let rv = self.resource_version;
        let object = object.map(|o| Arc::new(at_version(&o, rv)));
        let previous = match &object {
            Some(o) => self.objects.insert(key.clone(), o.clone()),
            None => self.objects.remove(&key),
        };
        let change = Change {
            rv,
            key,
            object: object.clone(),
            previous,
        };
        self.watchers
            .retain(|w| match event_for(&w.filter, &change) {
                Some(line) => w.events.send(line).is_ok(),
                None => !w.events.is_closed(),
            });
        self.history.push_back(change);
        while self.history.len() > self.history_limit {
            let dropped = self.history.pop_front().expect("non-empty");
            self.compacted = dropped.rv;
        }
        object
    }

    /// One page of a list; see [`ListQuery`].
    pub fn list(&self, query: &ListQuery) -> Result<ListPage, ApiError> {
        let (at, after) = match &query.continue_token {
            Some(token) => {
                let (rv, namespace, name) = parse_continue(token)?;
                if rv < self.compacted {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list \
                         result. You can start a new list without the continue parameter.",
                    ));
                }
                (rv, Some((namespace, name)))
            }
            None => match (query.exact, query.not_older_than) {
                (Some(rv), _) => (rv, None),
                (None, Some(rv)) if rv > self.resource_version => {
                    return Err(ApiError::too_large_resource_version(
                        rv,
                        self.resource_version,
                    ))
                }
                (None, _) => (self.resource_version, None),
            },
        };
        let snapshot = self.snapshot(query.filter.resource, at)?;
        let mut matching = snapshot
            .into_iter()
            .filter(|(key, object)| query.filter.matches(key, object))
            .filter(|(key, _)| {
                after
                    .as_ref()
                    .is_none_or(|(ns, name)| (&key.namespace, &key.name) > (ns, name))
            })
            .peekable();
        let mut items = Vec::new();
        let mut last = None;
        while query.limit.is_none_or(|limit| items.len() < limit) {
            let Some((key, object)) = matching.next() else {
                break;
            };
            last = Some(key);
            items.push(object);
        }
        let more = matching.peek().is_some();
        let remaining = matching.count();
        let continue_token = more
            .then(|| last.map(|k| format!("{at}/{}/{}", k.namespace, k.name)))
            .flatten();
        Ok(ListPage {
            resource_version: at,
            items,
            remaining: (more && !query.filter.has_selectors()).then_some(remaining),
            continue_token,
        })
    }

    /// The objects of `resource` as they were at version `at`, rebuilt by undoing the newer
    /// changes; 410 Gone when those changes were compacted away.
    fn snapshot(&self, resource: Resource, at: u64) -> Result<BTreeMap<Key, Arc<Value>>, ApiError> {
        if at < self.compacted {
            return Err(ApiError::expired(format!(
                "too old resource version: {at} ({})",
                self.compacted
            )));
        }
        if at > self.resource_version {
            return Err(ApiError::too_large_resource_version(
                at,
                self.resource_version,
            ));
        }
        let mut objects: BTreeMap<Key, Arc<Value>> = self
            .objects
            .iter()
            .filter(|(key, _)| key.resource == resource)
            .map(|(key, object)| (key.clone(), object.clone()))
            .collect();
        for change in self.history.iter().rev().take_while(|c| c.rv > at) {
            if change.key.resource != resource {
                continue;
            }
            match &change.previous {
                Some(previous) => objects.insert(change.key.clone(), previous.clone()),
                None => objects.remove(&change.key),
            };
        }
        Ok(objects)
    }

    /// Opens a watch: its receiver yields newline-terminated JSON watch events, starting with
    /// the initial ones, until the watch is dropped. A start older than the history yields a
    /// single ERROR event with code 410 (as the real server answers) and ends.
    pub fn watch(
        &mut self,
        filter: Filter,
        start: WatchStart,
        bookmarks: bool,
    ) -> UnboundedReceiver<Bytes> {
        let (events, receiver) = unbounded_channel();
        match start {
            WatchStart::Current { initial_events_end } => {
                for (key, object) in &self.objects {
                    if filter.matches(key, object) {
                        let _ = events.send(event_line("ADDED", object));
                    }
                }
                if initial_events_end {
                    let line = bookmark_line(filter.resource, self.resource_version, true);
                    let _ = events.send(line);
                }
            }
            WatchStart::After(rv) if rv < self.compacted => {
                self.gone_sent += 1;
                let status = ApiError::expired(format!(
                    "too old resource version: {rv} ({})",
                    self.compacted
                ))
                .status();
                let _ = events.send(event_line("ERROR", &status));
                return receiver;
            }
            WatchStart::After(rv) => {
                for change in self.history.iter().skip_while(|c| c.rv <= rv) {
                    if let Some(line) = event_for(&filter, change) {
                        let _ = events.send(line);
                    }
                }
            }
        }
        self.watchers.push(Watcher {
            filter,
            bookmarks,
            events,
        });
        receiver
    }

    /// Sends a BOOKMARK with the current version to every watch that asked for bookmarks.
    pub fn send_bookmarks(&mut self) {
        let rv = self.resource_version;
        self.watchers.retain(|w| {
            !w.bookmarks
                || w.events
                    .send(bookmark_line(w.filter.resource, rv, false))
                    .is_ok()
        });
    }

    /// Ends every open watch (clients see their streams end) and returns how many there were.
    pub fn drop_watches(&mut self) -> usize {
        self.watchers.retain(|w| !w.events.is_closed());
        let open = self.watchers.len();
        self.watchers.clear();
        open
    }

    /// Watches whose client is still listening.
    pub fn open_watches(&mut self) -> usize {
        self.watchers.retain(|w| !w.events.is_closed());
        self.watchers.len()
    }

    /// Forgets the whole history: watches from any earlier version get 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.resource_version;
    }

    /// How many 410 Gone ERROR events watches were sent.
    pub fn gone_sent(&self) -> usize {
        self.gone_sent
    }
}

/// The watch event `filter` sees for `change`, as the real server's watch cache decides it:
/// an object entering the selection is ADDED, one leaving it is DELETED (its previous state
/// at the change's version), one staying in is MODIFIED.
fn event_for(filter: &Filter, change: &Change) -> Option<Bytes> {
    let before = change
        .previous
        .as_ref()
        .filter(|p| filter.matches(&change.key, p));
    let after = change
        .object
        .as_ref()
        .filter(|o| filter.matches(&change.key, o));
    match (before, after) {
        (None, Some(object)) => Some(event_line("ADDED", object)),
        (Some(_), Some(object)) => Some(event_line("MODIFIED", object)),
        (Some(previous), None) => Some(event_line("DELETED", &at_version(previous, change.rv))),
        (None, None) => None,
    }
}

/// `{"type": kind, "object": object}` and a newline.
fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object}))
        .expect("JSON values serialize");
    line.push(b'\n');
    Bytes::from(line)
}

/// A BOOKMARK event for `resource` at `rv`.
fn bookmark_line(resource: Resource, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let object = json!({
        "apiVersion": resource.api_version(),
        "kind": resource.kind(),
        "metadata": metadata,
    });
    event_line("BOOKMARK", &object)
}

/// `object` with `metadata.resourceVersion` set to `rv`.
/// Where an object's deletion timestamp is.
const DELETION_TIMESTAMP: &str = "/metadata/deletionTimestamp";

/// Removes a deletion timestamp a client sent: only a delete sets one.
fn clear_deletion_timestamp(object: &mut Value) {
    if let Some(metadata) = object["metadata"].as_object_mut() {
        metadata.remove("deletionTimestamp");
    }
}

/// Whether `object` has finalizers, which hold its deletion back.
fn has_finalizers(object: &Value) -> bool {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|finalizers| !finalizers.is_empty())
}

fn at_version(object: &Value, rv: u64) -> Value {
    let mut object = object.clone();
    object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
    object
}

/// The key of `object`, after setting its `apiVersion` and `kind` and defaulting the
/// namespace of namespaced resources to `default`.
fn key_of(resource: Resource, object: &mut Value) -> Result<Key, ApiError> {
    let Some(fields) = object.as_object_mut() else {
        return Err(ApiError::invalid("an object must be a JSON object"));
    };
    fields.insert("apiVersion".into(), resource.api_version().into());
    fields.insert("kind".into(), resource.kind().into());
    let metadata = fields
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| ApiError::invalid("metadata must be an object"))?;
    let name = metadata
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::invalid("metadata.name: Required value"))?
        .to_string();
    let namespace = metadata
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let namespace = match (resource.namespaced(), namespace) {
        (true, "") => {
            metadata.insert("namespace".into(), "default".into());
            "default".to_string()
        }
        (true, ns) => ns.to_string(),
        (false, "") => String::new(),
        (false, ns) => {
            return Err(ApiError::invalid(format!(
                "metadata.namespace: {} objects are cluster-scoped, got namespace {ns:?}",
                resource.kind()
            )))
        }
    };
    Ok(Key {
        resource,
        namespace,
        name,
    })
}

/// `<rv>/<namespace>/<name>` of the last item of the previous page.
fn parse_continue(token: &str) -> Result<(u64, String, String), ApiError> {
    let mut parts = token.splitn(3, '/');
    let rv = parts.next().and_then(|rv| rv.parse().ok());
    match (rv, parts.next(), parts.next()) {
        (Some(rv), Some(namespace), Some(name)) => Ok((rv, namespace.into(), name.into())),
        _ => Err(ApiError::bad_request(format!(
            "invalid continue token {token:?}"
        ))),
    }
}
