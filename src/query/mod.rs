//! The one query layer: what the command line (`status`, `health`), the
//! mount's generated files and the web pages show is read here, from the
//! node, and nowhere else. None of them keeps state of its own; each only
//! renders what these functions return.

pub mod health;
pub mod jobs;
pub mod lines;
pub mod machines;
pub mod metrics;
pub mod status;

pub use health::{health, machine_notes, MachineNote, NoteKind};
