//! What a pipeline IS: the model, reading it from YAML with precise
//! diagnostics, variables, expressions and the job graph.
//!
//! `read` holds what every dialect reads YAML with (the checking context
//! and its typed readers); each dialect has a folder of its own that lowers
//! its YAML into the one model (`native/` today).
//!
//! Pure: nothing here does I/O except reading the pipeline file in [`load`].

pub mod diag;
pub mod expr;
pub mod graph;
pub mod model;
pub mod native;
pub mod read;
pub mod vars;
pub mod yaml;

pub use diag::{Diagnostic, Report, Severity};
pub use graph::Plan;
pub use model::{FailureClass, Job, Pipeline, Step, When};
pub use native::{ExecutorChoice, LoadOptions, load, parse_source};
