//! Binds the greedy kernel to its reference on the GPU: random rows of several vocabulary
//! sizes, planted ties, NaN/+inf/all -inf rows. Without a GPU the test prints why and passes,
//! unless `HEARTH_REQUIRE_GPU=1`. Also checks the source compiles with NVRTC.

use candle_core::{Device, Tensor};

use super::*;

#[test]
fn greedy_kernel_equals_the_reference() {
    let device = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) if std::env::var("HEARTH_REQUIRE_GPU").is_ok_and(|v| v == "1") => panic!("HEARTH_REQUIRE_GPU=1 but no CUDA device: {e}"),
        Err(e) => return eprintln!("skipped: no CUDA device ({e})"),
    };
    for (rows, vocab) in [(1, 7), (3, 1000), (8, 49152), (64, 128_256), (2, 1025)] {
        let mut values: Vec<f32> = Tensor::randn(0f32, 3.0, (rows, vocab), &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        // Row 0: a tie at the maximum, the lower id must win.
        if vocab > 5 {
            values[vocab - 1] = 100.0;
            values[3] = 100.0;
        }
        if rows > 1 {
            values[vocab + vocab / 2] = f32::NAN;
        }
        if rows > 2 {
            values[2 * vocab..3 * vocab].fill(f32::NEG_INFINITY);
        }
        if rows > 3 {
            values[3 * vocab + 1] = f32::INFINITY;
        }
        let logits = Tensor::from_vec(values, (rows, vocab), &Device::Cpu).unwrap();
        let want = greedy_tokens_reference(&logits).unwrap().to_vec1::<u32>().unwrap();
        let got = greedy_tokens(&logits.to_device(&device).unwrap()).unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(got, want, "rows {rows} vocab {vocab}");
        if vocab > 5 {
            assert_eq!(got[0], 3);
        }
    }
}

#[test]
fn greedy_source_compiles_with_nvrtc() {
    cuda::MODULE.compile().unwrap();
}
