//! state
/// Placeholder; the saved-state format lives on the `main` branch.
pub struct StateDict;
/// Placeholder; the saved-state format lives on the `main` branch.
pub struct EntryState;
