//! `StopSignal`: a flag set by Ctrl-C or SIGTERM (`hearth_server::shutdown_signal`), for the
//! blocking loops of `hearth node`/`cluster coordinator` and `hearth stage`, which poll it.
//! Owns the one-thread async runtime that waits for the signal; dropping it stops that runtime
//! without waiting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

pub struct StopSignal {
    stop: Arc<AtomicBool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl StopSignal {
    pub fn install() -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the signal handler")?;
        runtime.spawn({
            let stop = Arc::clone(&stop);
            async move {
                hearth_server::shutdown_signal().await;
                stop.store(true, Ordering::Relaxed);
            }
        });
        Ok(Self { stop, runtime: Some(runtime) })
    }

    /// The flag itself, for code that polls an `AtomicBool`.
    pub fn flag(&self) -> &AtomicBool {
        &self.stop
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

impl Drop for StopSignal {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
