//! One module per subcommand.

pub mod bench_model;
pub mod export;
pub mod inspect;
pub mod models;
pub mod perplexity;
pub mod pull;
pub mod run;
pub mod serve;
