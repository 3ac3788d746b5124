//! Errors of programming the maps: a failed map operation, a reconcile that stopped part way
//! and a service that does not fit.

use aya::maps::MapError;

use crate::model::{Frontend, ServicePortName};

/// One map operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} in map `{map}` failed")]
pub struct MapWriteError {
    pub map: &'static str,
    pub op: &'static str,
    #[source]
    pub source: MapError,
}

/// Writing the desired state failed part way. Every write before the failing one is recorded,
/// so the next reconcile continues from what the kernel really holds.
#[derive(Debug, thiserror::Error)]
#[error("{context}")]
pub struct ReconcileError {
    pub context: String,
    #[source]
    pub source: Box<MapWriteError>,
}

/// A service that does not fit into the maps; it is skipped (an already programmed version
/// stays in place) and everything else is programmed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "service {service} ({frontend}) not programmed: it needs {needed} more {resource} but only \
     {available} of {capacity} are free"
)]
pub struct CapacityError {
    pub service: ServicePortName,
    pub frontend: Frontend,
    pub resource: &'static str,
    pub needed: u32,
    pub available: u32,
    pub capacity: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Chain;

    #[test]
    fn map_write_error_names_the_map_the_op_and_the_cause() {
        let err = MapWriteError {
            map: "LB_SLOTS",
            op: "update",
            source: MapError::KeyNotFound,
        };
        assert_eq!(
            Chain(&err).to_string(),
            "update in map `LB_SLOTS` failed: key not found"
        );
    }
}
