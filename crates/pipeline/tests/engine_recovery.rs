//! The serving engine over a `PipelineExecutor`: a stage that dies fails the requests in flight
//! with an error naming it; when it comes back (a restarted process on the same port, with an
//! empty KV pool) the next request fails saying so, the engine forgets every block cached
//! before (no prefix hit reaches the lost K/V), and the same prompt then generates exactly the
//! tokens it generated before the failure.

mod common;

use candle_core::Device;
use common::*;
use hearth_engine::serve::{EngineHandle, EngineRequest, FinishReason};
use hearth_models::ModelFiles;
use hearth_pipeline::{PipelineExecutor, PipelineParams, PoolShape, StageLocation};

/// Generated token ids and cached prompt tokens, or the error the request finished with.
fn generate(handle: &EngineHandle, prompt: &[u32], max_tokens: usize) -> Result<(Vec<u32>, usize), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let mut request = EngineRequest::greedy(prompt.to_vec(), max_tokens);
        request.ignore_eos = true;
        let mut stream = handle.add(request).map_err(|e| e.to_string())?;
        let mut token_ids = Vec::new();
        while let Some(delta) = stream.recv().await {
            token_ids.extend(&delta.token_ids);
            if let Some(finish) = delta.finish {
                return match finish.reason {
                    FinishReason::Error(message) => Err(message),
                    _ => Ok((token_ids, finish.usage.cached_tokens)),
                };
            }
        }
        Err("the stream ended without a final delta".into())
    })
}

#[test]
fn a_stage_that_dies_fails_requests_and_once_back_the_engine_forgets_the_lost_kv() {
    let path = fixture_dir("llama").join("model.gguf");
    let files = ModelFiles::open(&path).unwrap();
    let first = StageThread::start(&path, 0..1);
    let mut last = StageThread::start(&path, 1..2);
    let last_address = last.address;
    let dialer = dialer();
    let params = PipelineParams {
        config: &files.config,
        stages: vec![(0..1, StageLocation::Remote(first.address)), (1..2, StageLocation::Remote(last_address))],
        pool: PoolShape { num_blocks: NUM_BLOCKS, block_size: BLOCK_SIZE },
        dialer: &dialer,
        timing: timing(),
        device: Device::Cpu,
    };
    let handle = start_engine(PipelineExecutor::connect(params).unwrap(), &files, 256);
    let prompt: Vec<u32> = (0..9).map(|i| 5 + 7 * i).collect();
    let (before, _) = generate(&handle, &prompt, 6).unwrap();

    last.stop();
    let failed = generate(&handle, &[3, 1, 4, 1, 5], 6).unwrap_err();
    assert!(failed.contains("pipeline stage 1 (layers 1..2") && failed.contains(&last_address.to_string()), "{failed}");

    let _restarted = StageThread::start_at(&path, 1..2, last_address);
    let lost = generate(&handle, &[2, 7, 1, 8], 6).unwrap_err();
    assert!(lost.contains("reconnected") && lost.contains("KV cache starts empty"), "{lost}");

    let (after, num_cached) = generate(&handle, &prompt, 6).unwrap();
    assert_eq!(num_cached, 0, "a prefix hit would read K/V the restarted stage never computed");
    assert_eq!(after, before, "the same prompt must generate the same tokens after recovery");
    assert!(handle.is_running());
}
