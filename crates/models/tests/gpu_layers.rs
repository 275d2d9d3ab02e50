//! On a GPU: the dequantize + GEMM product used for large quantized products
//! (`layers::dequantized_gemm`: Q4_K/Q6_K/Q8_0 to BF16 with BF16 activations, Q4_1 to F16) against
//! the F32 reference (weights dequantized to F32, F32 activations), at prompt-sized row counts. Skips without a GPU
//! unless `HEARTH_REQUIRE_GPU=1`.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use hearth_models::layers::dequantized_gemm;

#[test]
fn dequantized_gemm_matches_the_f32_product() {
    let device = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) if std::env::var("HEARTH_REQUIRE_GPU").is_ok_and(|v| v == "1") => panic!("HEARTH_REQUIRE_GPU=1 but no CUDA device: {e}"),
        Err(e) => return eprintln!("skipped: no CUDA device ({e})"),
    };
    let (n, k) = (384, 1024);
    for dtype in [GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::Q8_0, GgmlDType::Q4_1] {
        let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let w_ref = q.dequantize(&Device::Cpu).unwrap();
        let q_gpu = candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, &q.data().unwrap(), vec![n, k], &device).unwrap();
        for rows in [128, 512] {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu).unwrap();
            let want = x.matmul(&w_ref.t().unwrap()).unwrap();
            let got = dequantized_gemm(&q_gpu, &x.to_dtype(DType::BF16).unwrap().to_device(&device).unwrap())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap();
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            // BF16 inputs and weights rounded to 16 bits: about 1 % of the largest output.
            assert!(diff <= 0.02 * scale, "{dtype:?} rows {rows}: max diff {diff} vs max |y| {scale}");
            eprintln!("{dtype:?} rows {rows}: max diff {diff:.4} (max |y| {scale:.3})");
        }
    }
}
