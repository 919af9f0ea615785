//! End-to-end tests: whole jobs through the coordinator, and the real
//! `cutpoint` binary killed with SIGKILL and restored from storage.
//! One test binary on purpose (the workspace links RocksDB once).

mod api;
mod binary;
mod chaos;
mod common;
mod contract;
mod defects;
mod docker;
mod event_time;
mod fraud;
mod gc;
mod incremental;
mod interval_join;
mod operators;
mod pipeline;
mod setup_script;
mod stages;
mod storage;
mod typed;
mod unaligned;
mod windows;
mod words;
