//! The filter dialects a trigger's `filter` is written in, over CloudEvents:
//!
//! - [`cesql`]: CloudEvents SQL (`sql`), a parser and an evaluator passing the whole TCK.
//! - [`celexpr`]: the Common Expression Language (`cel`), compiled once, with bounds on what
//!   an expression may cost.
//!
//! The broker owns them: no connector filters, so no connector crate builds a parser.
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]
#![warn(missing_docs)]

pub mod celexpr;
pub mod cesql;
