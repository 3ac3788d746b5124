//! Kubernetes objects -> desired state, independent of where the objects come from.

#[cfg(test)]
mod tests;
pub mod translate;
pub mod validate;

pub use translate::desired_state;
pub use validate::{ServiceDef, SliceDef};
