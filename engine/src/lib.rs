//! The Sluice engine: SQL front end, catalog and storage.
//!
//! ```text
//!   SQL text ──parse──▶ Statement ──Session::prepare──▶ Prepared ──Session::execute──▶ Output
//!                                        │                               │
//!                                  DataFusion planner           DataFusion runtime
//!                                        │                               │
//!                               DurableCatalog (data dir)      object stores (StoreRegistry)
//! ```
//!
//! The engine builds and tests with no network and no wire protocol: the
//! server crate speaks pgwire, the connectors crate implements storage
//! providers for `s3://` and `hdfs://`.

pub mod catalog;
pub mod checkpoint;
pub mod colnames;
pub mod compute;
pub mod copy;
mod engine;
pub mod error;
pub mod functions;
mod jobs;
pub mod oidarrays;
pub mod optimizer;
pub mod overflow;
pub mod parser;
pub mod paths;
pub mod pgliterals;
pub mod pgnumeric;
pub mod pgrelations;
pub mod retry;
pub mod roles;
pub mod secrets;
pub mod sink;
pub mod storage;
pub mod stream;
pub mod streaming;
pub mod subquery;
pub mod types;
pub mod versions;

pub use engine::{
    CATALOG_NAME, DEFAULT_SCHEMA, Engine, EngineAuth, EngineConfig, Output, PG_SERVER_VERSION, Prepared,
    Session,
};
pub use error::{ErrorKind, Result, SluiceError};
pub use jobs::{CheckpointFigures, OperatorFigures};
pub use parser::Statement;
pub use sink::{Landed, SinkConnector, SinkContext, SinkRegistry, SinkWriter};
pub use storage::{StoreProvider, StoreRegistry};
pub use stream::{Source, SourceConnector, SourceRegistry};

/// Re-exported so dependents use the exact DataFusion the engine is built on.
pub use datafusion;
