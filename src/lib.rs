//! scuttlefs: Secure Scuttlebutt feeds, replicated between machines and
//! mounted as a filesystem. See `docs/ARCHITECTURE.md` for the map.
#![warn(missing_docs)]

pub mod alert;
pub mod cli;
pub mod clock;
pub mod commit_group;
pub mod config;
pub mod control;
pub mod daemon;
pub mod feed;
pub mod follow;
pub mod fs;
pub mod fuse;
pub mod graph;
pub mod health;
pub mod join;
pub mod mountpoint;
pub mod net;
pub mod node;
pub mod notices;
pub mod platform;
pub mod publish;
pub mod query;
pub mod run;
pub mod schedule;
pub mod service;
pub mod store;
pub mod view;
pub mod vocab;
pub mod web;
