//! File source: Services (v1) and EndpointSlices (discovery.k8s.io/v1) from the `*.yaml` and
//! `*.yml` files of a directory (multi-document; hidden files and other kinds are ignored).
//!
//! Bad input never removes what is programmed: an invalid object is skipped and its last valid
//! version stays in effect; a file that is not valid YAML keeps its last good objects. An
//! object defined in more than one file comes from the file it came from before, as long as
//! that file still defines it; a new object from the first file (by name) that defines it.
//! The other definitions are reported as duplicates and ignored, whatever their file names.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use lb_common::Capacity;
use serde::Deserialize;
use serde_yaml::Value;
use tracing::debug;

use crate::k8s::{desired_state, NodeDef, ServiceDef, SliceDef};
use crate::model::DesiredState;
use crate::objects::{FieldError, LastValid, ObjectError, ObjectKey, SkippedObject};

/// A manifests directory, read again on every [`ManifestDir::poll`].
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    node: NodeDef,
    max_endpoints: usize,
    /// Contents (or read error) of every manifest file at the last poll.
    last_read: Option<Files>,
    /// The documents of each file as last parsed; reused while a file does not parse.
    documents: BTreeMap<PathBuf, Vec<Document>>,
    services: LastValid<ServiceDef>,
    slices: LastValid<SliceDef>,
    /// The file each object's definition in effect comes from.
    owners: BTreeMap<ObjectId, PathBuf>,
}

/// An object's kind and key: what a duplicate shares.
type ObjectId = (Kind, ObjectKey);

type Files = BTreeMap<PathBuf, Result<Vec<u8>, String>>;

/// What a poll found: the desired state and the problems to report.
#[derive(Debug)]
pub struct Sync {
    pub state: DesiredState,
    /// Services in effect (valid now or kept from before).
    pub services: usize,
    /// EndpointSlices in effect.
    pub endpoint_slices: usize,
    /// What was skipped (see `errors`): objects whose current version is invalid or that
    /// have no name, duplicates, and files that do not parse.
    pub invalid_objects: usize,
    pub errors: Vec<ManifestError>,
}

/// Kinds this source reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Service,
    EndpointSlice,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One YAML document of a file.
#[derive(Clone, Debug)]
enum Document {
    Service(ObjectKey, Result<ServiceDef, ObjectError>),
    Slice(ObjectKey, Result<SliceDef, ObjectError>),
    /// An object without a name: it cannot be tracked, only reported.
    Unnamed(ObjectError),
}

impl ManifestDir {
    /// Reads `dir` for a node without addresses (no node ports) and default map capacities.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            node: NodeDef::default(),
            max_endpoints: Capacity::Backends.default_entries() as usize,
            last_read: None,
            documents: BTreeMap::new(),
            services: LastValid::default(),
            slices: LastValid::default(),
            owners: BTreeMap::new(),
        }
    }

    /// Translates for `node`: its name decides which endpoints are local, its addresses serve
    /// node ports.
    pub fn for_node(mut self, node: NodeDef) -> Self {
        self.node = node;
        self
    }

    /// Rejects EndpointSlices with more endpoints than the backends map holds.
    pub fn max_endpoints(mut self, max_endpoints: usize) -> Self {
        self.max_endpoints = max_endpoints;
        self
    }

    /// Reads the directory; returns the new state when any manifest file was added, removed
    /// or changed since the last poll (always on the first poll), `None` otherwise.
    pub fn poll(&mut self) -> Result<Option<Sync>, ManifestDirError> {
        let files = read_files(&self.dir)?;
        if self.last_read.as_ref() == Some(&files) {
            return Ok(None);
        }
        let sync = self.load(&files);
        self.last_read = Some(files);
        Ok(Some(sync))
    }

    fn load(&mut self, files: &Files) -> Sync {
        let mut previous = std::mem::take(&mut self.documents);
        let mut errors = Vec::new();
        for (path, contents) in files {
            let parsed = match contents {
                Ok(bytes) => parse_file(path, bytes, self.max_endpoints),
                Err(e) => Err(e.clone()),
            };
            let documents = parsed.unwrap_or_else(|message| {
                errors.push(ManifestError::InvalidFile {
                    path: path.clone(),
                    message,
                });
                previous.remove(path).unwrap_or_default()
            });
            self.documents.insert(path.clone(), documents);
        }
        self.owners = self.owners();

        let mut taken = BTreeSet::new();
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for (path, documents) in &self.documents {
            for document in documents {
                let Some(id) = document.id() else {
                    if let Document::Unnamed(error) = document {
                        errors.push(ManifestError::InvalidObject(SkippedObject {
                            error: error.clone(),
                            kept_previous: false,
                        }));
                    }
                    continue;
                };
                let owner = &self.owners[&id];
                if owner != path || !taken.insert(id.clone()) {
                    let (kind, key) = id;
                    errors.push(ManifestError::Duplicate {
                        path: path.clone(),
                        kind: kind.to_string(),
                        namespace: key.namespace,
                        name: key.name,
                        in_effect: owner.clone(),
                    });
                    continue;
                }
                match document {
                    Document::Service(key, parsed) => services.push((key.clone(), parsed.clone())),
                    Document::Slice(key, parsed) => slices.push((key.clone(), parsed.clone())),
                    Document::Unnamed(_) => {}
                }
            }
        }
        let skipped = self
            .services
            .replace_all(services)
            .into_iter()
            .chain(self.slices.replace_all(slices));
        errors.extend(skipped.map(ManifestError::InvalidObject));
        Sync {
            state: desired_state(self.services.values(), self.slices.values(), &self.node),
            services: self.services.len(),
            endpoint_slices: self.slices.len(),
            invalid_objects: errors.len(),
            errors,
        }
    }

    /// The file each object defined in the documents comes from: the one it came from
    /// before, while that file still defines it (a file that stopped parsing keeps its last
    /// good objects), else the first file by name that defines it.
    fn owners(&self) -> BTreeMap<ObjectId, PathBuf> {
        let mut defined_in: BTreeMap<ObjectId, Vec<&PathBuf>> = BTreeMap::new();
        for (path, documents) in &self.documents {
            for id in documents.iter().filter_map(Document::id) {
                defined_in.entry(id).or_default().push(path);
            }
        }
        defined_in
            .into_iter()
            .map(|(id, paths)| {
                let owner = self
                    .owners
                    .get(&id)
                    .filter(|owner| paths.contains(owner))
                    .unwrap_or(paths[0])
                    .clone();
                (id, owner)
            })
            .collect()
    }
}

impl Document {
    /// The object's kind and key; `None` without a name.
    fn id(&self) -> Option<ObjectId> {
        match self {
            Document::Service(key, _) => Some((Kind::Service, key.clone())),
            Document::Slice(key, _) => Some((Kind::EndpointSlice, key.clone())),
            Document::Unnamed(_) => None,
        }
    }
}

/// Contents of every manifest file in `dir`, sorted by path.
fn read_files(dir: &Path) -> Result<Files, ManifestDirError> {
    let failed = |source| ManifestDirError {
        dir: dir.to_path_buf(),
        source,
    };
    let mut files = Files::new();
    for entry in fs::read_dir(dir).map_err(failed)? {
        let path = entry.map_err(failed)?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        let manifest = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if hidden || !manifest || path.is_dir() {
            continue;
        }
        let contents = fs::read(&path).map_err(|e| format!("cannot be read: {e}"));
        files.insert(path, contents);
    }
    Ok(files)
}

/// The Services and EndpointSlices of one file, each valid or with the reason it is not;
/// `Err` when the file is not UTF-8 YAML.
fn parse_file(path: &Path, bytes: &[u8], max_endpoints: usize) -> Result<Vec<Document>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| format!("not valid YAML: {e}"))?;
        if value.is_null() {
            continue;
        }
        if let Some(document) = parse_object(path, value, max_endpoints) {
            documents.push(document);
        }
    }
    Ok(documents)
}

/// One object; `None` when it is of a kind this source does not read.
fn parse_object(path: &Path, value: Value, max_endpoints: usize) -> Option<Document> {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
    let api_version = text(value.get("apiVersion"));
    let kind_name = text(value.get("kind"));
    let kind = match (api_version.as_str(), kind_name.as_str()) {
        ("v1", "Service") => Kind::Service,
        ("discovery.k8s.io/v1", "EndpointSlice") => Kind::EndpointSlice,
        _ => {
            debug!("{}: ignoring {api_version} {kind_name}", path.display());
            return None;
        }
    };
    let metadata = value.get("metadata");
    let name = text(metadata.and_then(|m| m.get("name")));
    let namespace = Some(text(metadata.and_then(|m| m.get("namespace"))))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let key = ObjectKey::new(namespace, name);
    let object_error = |error| ObjectError {
        file: Some(path.to_path_buf()),
        kind: kind.to_string(),
        namespace: key.namespace.clone(),
        name: match key.name.as_str() {
            "" => "<unnamed>".to_string(),
            name => name.to_string(),
        },
        error,
    };
    let document = match kind {
        Kind::Service => {
            let parsed = typed::<Service>(value).and_then(|s| ServiceDef::from_k8s(&s));
            Document::Service(key.clone(), parsed.map_err(object_error))
        }
        Kind::EndpointSlice => {
            let parsed =
                typed::<EndpointSlice>(value).and_then(|s| SliceDef::from_k8s(&s, max_endpoints));
            Document::Slice(key.clone(), parsed.map_err(object_error))
        }
    };
    if key.name.is_empty() {
        return match document {
            Document::Service(_, Err(e)) | Document::Slice(_, Err(e)) => Some(Document::Unnamed(e)),
            // `from_k8s` rejects objects without a name.
            _ => None,
        };
    }
    Some(document)
}

/// Deserializes a Kubernetes type; a type error names the field it happened at.
fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = match e.path().to_string().as_str() {
            "." => "(object)".to_string(),
            path => path.to_string(),
        };
        FieldError::new(field, e.into_inner().to_string())
    })
}

/// A problem in the manifests; what was in effect before stays in effect.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    InvalidObject(SkippedObject),
    #[error("{}: {message} (keeping the file's last good objects)", path.display())]
    InvalidFile { path: PathBuf, message: String },
    /// `path` defines an object again; the definition from `in_effect` stays in effect.
    #[error(
        "{}: {kind} {namespace}/{name} is already defined in {}, whose definition stays in \
         effect; ignored",
        path.display(),
        in_effect.display()
    )]
    Duplicate {
        path: PathBuf,
        kind: String,
        namespace: String,
        name: String,
        in_effect: PathBuf,
    },
}

/// Reading the manifests directory failed.
#[derive(Debug, thiserror::Error)]
#[error("reading manifests directory {} failed", dir.display())]
pub struct ManifestDirError {
    pub dir: PathBuf,
    #[source]
    pub source: io::Error,
}

#[cfg(test)]
mod tests;
