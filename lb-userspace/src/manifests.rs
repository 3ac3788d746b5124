//! File source: Services (v1) and EndpointSlices (discovery.k8s.io/v1) from the `*.yaml` and
//! `*.yml` files of a directory (multi-document; hidden files and other kinds are ignored).
//!
//! Bad input never removes what is programmed: an invalid object is skipped and its last valid
//! version stays in effect; a file that is not valid YAML keeps its last good objects.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use serde_yaml::Value;
use tracing::debug;

use crate::error::{FieldError, ManifestDirError, ManifestError, ObjectError};
use crate::k8s::{desired_state, ServiceDef, SliceDef};
use crate::model::DesiredState;

/// A manifests directory, read again on every [`ManifestDir::poll`].
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    /// Contents (or read error) of every manifest file at the last poll.
    last_read: Option<Files>,
    /// Objects in effect, by file, as of the last poll.
    objects: BTreeMap<PathBuf, Vec<(ObjectKey, Object)>>,
}

type Files = BTreeMap<PathBuf, Result<Vec<u8>, String>>;

/// What a poll found: the desired state and the problems to report.
#[derive(Debug)]
pub struct Sync {
    pub state: DesiredState,
    /// Services in effect (valid now or kept from before).
    pub services: usize,
    /// EndpointSlices in effect.
    pub endpoint_slices: usize,
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

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ObjectKey {
    kind: Kind,
    namespace: String,
    name: String,
}

#[derive(Clone, Debug)]
enum Object {
    Service(ServiceDef),
    Slice(SliceDef),
}

/// One YAML document of a file.
enum Document {
    Valid(ObjectKey, Object),
    /// Invalid; the key is known when the object has a name.
    Invalid(Option<ObjectKey>, ObjectError),
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            last_read: None,
            objects: BTreeMap::new(),
        }
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
        let previous = std::mem::take(&mut self.objects);
        let last_valid: BTreeMap<&ObjectKey, &Object> =
            previous.values().flatten().map(|(k, o)| (k, o)).collect();
        let mut defined_in: BTreeMap<ObjectKey, PathBuf> = BTreeMap::new();
        let mut errors = Vec::new();

        for (path, contents) in files {
            let documents = match contents {
                Ok(bytes) => parse_file(path, bytes),
                Err(e) => Err(e.clone()),
            };
            let documents = match documents {
                Ok(documents) => documents,
                Err(message) => {
                    errors.push(ManifestError::InvalidFile {
                        path: path.clone(),
                        message,
                    });
                    let kept = previous.get(path).cloned().unwrap_or_default();
                    self.objects.insert(path.clone(), kept);
                    continue;
                }
            };
            let mut in_effect = Vec::new();
            for document in documents {
                let (key, object) = match document {
                    Document::Valid(key, object) => (key, object),
                    Document::Invalid(key, error) => {
                        let kept = key.and_then(|k| last_valid.get(&k).map(|o| (k, (*o).clone())));
                        errors.push(ManifestError::InvalidObject {
                            error,
                            kept_previous: kept.is_some(),
                        });
                        let Some((key, object)) = kept else { continue };
                        (key, object)
                    }
                };
                if let Some(first) = defined_in.get(&key) {
                    errors.push(ManifestError::Duplicate {
                        path: path.clone(),
                        kind: key.kind.to_string(),
                        namespace: key.namespace,
                        name: key.name,
                        first: first.clone(),
                    });
                    continue;
                }
                defined_in.insert(key.clone(), path.clone());
                in_effect.push((key, object));
            }
            self.objects.insert(path.clone(), in_effect);
        }
        self.sync(errors)
    }

    fn sync(&self, errors: Vec<ManifestError>) -> Sync {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for (_, object) in self.objects.values().flatten() {
            match object {
                Object::Service(s) => services.push(s.clone()),
                Object::Slice(s) => slices.push(s.clone()),
            }
        }
        Sync {
            state: desired_state(&services, &slices),
            services: services.len(),
            endpoint_slices: slices.len(),
            errors,
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
fn parse_file(path: &Path, bytes: &[u8]) -> Result<Vec<Document>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| format!("not valid YAML: {e}"))?;
        if value.is_null() {
            continue;
        }
        if let Some(document) = parse_object(path, value) {
            documents.push(document);
        }
    }
    Ok(documents)
}

/// One object; `None` when it is of a kind this source does not read.
fn parse_object(path: &Path, value: Value) -> Option<Document> {
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
    let key = ObjectKey {
        kind,
        namespace,
        name,
    };

    let parsed = match kind {
        Kind::Service => typed::<Service>(value)
            .and_then(|s| ServiceDef::from_k8s(&s))
            .map(Object::Service),
        Kind::EndpointSlice => typed::<EndpointSlice>(value)
            .and_then(|s| SliceDef::from_k8s(&s))
            .map(Object::Slice),
    };
    Some(match parsed {
        Ok(object) => Document::Valid(key, object),
        Err(error) => {
            let error = ObjectError {
                file: path.to_path_buf(),
                kind: kind.to_string(),
                namespace: key.namespace.clone(),
                name: match key.name.as_str() {
                    "" => "<unnamed>".to_string(),
                    name => name.to_string(),
                },
                error,
            };
            Document::Invalid(Some(key).filter(|k| !k.name.is_empty()), error)
        }
    })
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

#[cfg(test)]
mod tests;
