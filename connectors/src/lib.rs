//! Sluice connectors: implementations of the engine's traits for external
//! systems.
//!
//! - `storage::S3StoreProvider`: `s3://bucket/prefix` on any S3-compatible
//!   endpoint (AWS, MinIO, moto, s3s-fs).
//! - `storage::HdfsStoreProvider`: `hdfs://namenode:port/path`.
//! - `nexmark::NexmarkConnector`: the Nexmark benchmark's event generator.
//! - `filesystem::FileSystemSink`: exactly-once Hive-style files (with a
//!   commit log, `commitlog`).
//! - `delta::DeltaSink`: exactly-once, versioned landed tables (Delta Lake).

mod appendfiles;
mod aside;
pub mod avro;
mod commitlog;
pub mod datagen;
pub mod delta;
pub mod filesource;
pub mod filesystem;
pub mod format;
pub mod kafka;
pub mod nexmark;
pub mod storage;
