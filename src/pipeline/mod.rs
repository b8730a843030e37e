//! What a pipeline IS: the model, reading it from YAML with precise
//! diagnostics, variables, expressions and the job graph.
//!
//! Pure: nothing here does I/O except reading the pipeline file in [`load`].

pub mod diag;
pub mod expr;
pub mod graph;
pub mod model;
pub mod parse;
pub mod vars;
pub mod yaml;

pub use diag::{Diagnostic, Report, Severity};
pub use graph::Plan;
pub use model::{FailureClass, Job, Pipeline, Step, When};
pub use parse::{ExecutorChoice, LoadOptions, load, parse_source};
