//! state
pub struct StateDict; pub struct EntryState;
