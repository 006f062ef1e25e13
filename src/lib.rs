//! scuttlefs: Secure Scuttlebutt feeds, replicated between machines and mounted as a filesystem.
#![warn(missing_docs)]

pub mod feed;
pub mod store;
pub mod view;
