//! Continuous queries: the streaming planner, incremental operators, the
//! job runtime and materialized views.
//!
//! ```text
//!  SQL ─▶ DataFusion LogicalPlan (optimized) ─▶ plan::Planner ─▶ Node tree
//!                                                              │
//!                         runtime::Job::start ◀────────────────┘
//!     sources ─▶ fused stateless steps ─▶ hash exchange ─▶ keyed operators ─▶ sink / view
//! ```

pub mod keygroups;
pub mod lookup;
pub mod metrics;
pub mod mview;
pub mod operators;
pub mod plan;
pub mod runtime;
pub(crate) mod state;
pub mod versioned;
pub mod window;
