//! `lb-agent cleanup`: removes everything `lb-agent run` left pinned, which detaches its
//! programs and frees its maps.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tracing::info;

use super::{links_dir, maps_dir};
use crate::bpffs;
use crate::bpffs::BpffsError;
use crate::datapath::link_pin::LinkPin;

/// Removes the pinned links (first, so the programs detach) and maps of the agent using
/// `bpffs_dir`, then the directories as far as they are empty. Returns the removed pins.
/// Files the agent does not make (outside `links/` and `maps/`) are left alone. Refuses while
/// an agent runs with that directory.
pub fn cleanup(bpffs_dir: &Path) -> Result<Vec<PathBuf>, BpffsError> {
    // Held until the end, so no agent starts adopting pins that are being removed.
    let _lock = match bpffs::try_lock_dir(bpffs_dir) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            return Err(BpffsError::InUse {
                path: bpffs_dir.to_path_buf(),
            })
        }
        Err(BpffsError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for dir in [links_dir(bpffs_dir), maps_dir(bpffs_dir)] {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(BpffsError::io("reading", &dir, e)),
        };
        for entry in entries {
            let path = entry
                .map_err(|e| BpffsError::io("reading", &dir, e))?
                .path();
            fs::remove_file(&path).map_err(|e| BpffsError::io("removing", &path, e))?;
            let link = path
                .file_name()
                .and_then(|name| LinkPin::parse(&name.to_string_lossy()))
                .filter(|_| dir.ends_with("links"));
            match link {
                // The file name writes a dot as ':': say which interface it was.
                Some(link) => info!("removed {} ({link})", path.display()),
                None => info!("removed {}", path.display()),
            }
            removed.push(path);
        }
        bpffs::remove_empty_dirs(&dir, bpffs_dir);
    }
    Ok(removed)
}
