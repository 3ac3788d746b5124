//! `LB_SVC_NAMES`: the `namespace/name:port` of each slot group id, written after each
//! complete apply so `lb-agent inspect` can name frontends from the pins alone.

use std::collections::BTreeMap;

use crate::datapath::DatapathMaps;
use crate::reconciler::{CountedService, MapWriteError};

/// What the agent last wrote to `LB_SVC_NAMES`; unknown (read back) after a start or failure.
#[derive(Debug, Default)]
pub(super) struct ServiceNames {
    written: Option<BTreeMap<u32, String>>,
}

impl ServiceNames {
    /// Whether what the map holds is known, so only a change of the counted services
    /// (`ReconcileSummary::labels_changed`) needs a [`ServiceNames::sync`]: an endpoint
    /// change then costs nothing here, where listing every name cost O(Services).
    pub(super) fn is_known(&self) -> bool {
        self.written.is_some()
    }

    /// Makes the next [`ServiceNames::sync`] compare every name with the map.
    pub(super) fn forget(&mut self) {
        self.written = None;
    }

    /// Writes the names that changed and removes those of group ids no longer counted.
    pub(super) fn sync(
        &mut self,
        counted: &[CountedService],
        maps: &mut DatapathMaps,
    ) -> Result<(), MapWriteError> {
        let wanted: BTreeMap<u32, String> = counted
            .iter()
            .map(|service| (service.group_id, service.name.to_string()))
            .collect();
        let written = match self.written.take() {
            Some(written) => written,
            None => maps.read_service_names()?,
        };
        for (id, name) in &wanted {
            if written.get(id) != Some(name) {
                maps.set_service_name(*id, name)?;
            }
        }
        for id in written.keys().filter(|id| !wanted.contains_key(id)) {
            maps.remove_service_name(*id)?;
        }
        self.written = Some(wanted);
        Ok(())
    }
}
