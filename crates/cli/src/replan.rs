//! The coordinator's re-planning for `hearth serve --pipeline-peers`: the `PeerPlanner` that
//! placed the model at start becomes the executor's `Replanner` (hearth_pipeline's
//! `executor/replan.rs` decides when a stage is gone and when to try again).
//!
//! Owns: reporting a re-plan (its plan and stage lines on stderr, as at start) and turning its failure into
//! the reason requests get. Does not own: the placement (`pipeline_plan`), when to re-plan.

use std::ops::Range;

use hearth_pipeline::{HeldStages, Replanner, StageLocation};

use crate::pipeline_plan::PeerPlanner;

impl Replanner for PeerPlanner {
    fn replan(&mut self, held: HeldStages) -> Result<Vec<(Range<usize>, StageLocation)>, String> {
        let planned = self.place(held).map_err(|err| format!("{err:#}"))?;
        for line in &planned.summary {
            eprintln!("re-{line}");
        }
        for (stage_idx, (layers, location)) in planned.locations.iter().enumerate() {
            let place = match location {
                StageLocation::Local(_) => "in this process".to_string(),
                StageLocation::Remote(address) => format!("at {address}"),
                StageLocation::Connected(remote) => format!("at {}", remote.address()),
            };
            eprintln!("pipeline stage {stage_idx}: layers {}..{} {place}", layers.start, layers.end);
        }
        Ok(planned.locations)
    }
}
