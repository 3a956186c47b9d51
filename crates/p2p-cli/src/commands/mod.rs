//! One file per group of commands; each turns its arguments into requests
//! and prints what comes back.

pub mod ask;
pub mod files;
pub mod info;
pub mod store;
