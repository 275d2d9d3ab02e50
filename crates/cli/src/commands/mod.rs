//! One module per subcommand.

pub mod bench;
pub mod bench_model;
pub mod cluster;
pub mod export;
pub mod inspect;
pub mod models;
pub mod node;
pub mod perplexity;
pub mod plan;
pub mod pull;
pub mod run;
pub mod serve;
pub mod stage;
