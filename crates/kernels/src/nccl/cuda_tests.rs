//! NCCL on the GPUs of this machine: the probe, then a group over every visible GPU (one
//! thread per rank) whose all-reduce equals the sum and whose all-gather stacks in rank order,
//! in F32/BF16/F16; an aborted communicator refuses later calls. Without a GPU or NCCL the tests
//! print why and pass, unless `HEARTH_REQUIRE_GPU=1`.

use candle_core::{DType, Device, Tensor};

use super::*;

fn gpus() -> Vec<Device> {
    let require = std::env::var("HEARTH_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let mut devices = Vec::new();
    while let Ok(device) = Device::new_cuda(devices.len()) {
        devices.push(device);
    }
    if let Err(e) = probe() {
        assert!(!require, "HEARTH_REQUIRE_GPU=1 but NCCL cannot be used: {e}");
        eprintln!("skipped: {e}");
        return Vec::new();
    }
    assert!(!require || !devices.is_empty(), "HEARTH_REQUIRE_GPU=1 but no CUDA device");
    devices
}

/// Runs `body(rank_comm, rank_device)` on one thread per device of one group.
fn on_group<T: Send>(devices: &[Device], body: impl Fn(&NcclComm, &Device) -> T + Sync) -> Vec<T> {
    let id = NcclId::new().unwrap();
    std::thread::scope(|s| {
        let threads: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(rank, device)| {
                let body = &body;
                s.spawn(move || {
                    let comm = NcclComm::init_rank(device, &id, rank, devices.len()).unwrap();
                    body(&comm, device)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

#[test]
fn all_reduce_sums_and_all_gather_stacks_in_rank_order() {
    let devices = gpus();
    if devices.is_empty() {
        return;
    }
    eprintln!("NCCL {:?} over {} GPU(s)", probe().unwrap(), devices.len());
    let n = devices.len();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let results = on_group(&devices, |comm, device| {
            let rank = comm.rank() as f32;
            let x = (Tensor::arange(0f32, 6.0, device).unwrap().reshape((2, 3)).unwrap() + rank as f64).unwrap().to_dtype(dtype).unwrap();
            let sum = comm.all_reduce_sum(&x).unwrap().to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
            let gathered = comm.all_gather(&x).unwrap();
            assert_eq!(gathered.dims(), &[comm.world_size(), 2, 3]);
            let gathered = gathered.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (sum, gathered)
        });
        let ranks_sum = (n * (n - 1) / 2) as f32;
        for (sum, gathered) in results {
            let want: Vec<Vec<f32>> = (0..2).map(|r| (0..3).map(|c| (r * 3 + c) as f32 * n as f32 + ranks_sum).collect()).collect();
            assert_eq!(sum, want, "{dtype:?}");
            let want: Vec<f32> = (0..n).flat_map(|rank| (0..6).map(move |i| (i + rank) as f32)).collect();
            assert_eq!(gathered, want, "{dtype:?}");
        }
    }
}

#[test]
fn an_aborted_communicator_refuses_later_calls() {
    let devices = gpus();
    if devices.is_empty() {
        return;
    }
    let results = on_group(&devices[..1], |comm, device| {
        let x = Tensor::ones(4, DType::F32, device).unwrap();
        comm.all_reduce_sum(&x).unwrap();
        comm.abort();
        comm.all_reduce_sum(&x).map(|_| ()).unwrap_err().to_string()
    });
    assert!(results[0].contains("aborted"), "{}", results[0]);
}
