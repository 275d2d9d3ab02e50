//! Binds a recorded graph to the eager run it recorded, on the GPU: our kernels (norms, int8 and
//! grouped matvecs, the gated product) mixed with candle's own, allocating and dropping buffers
//! between them, as a generation step does. Replays must give the eager results bit for bit,
//! also after the input buffer was rewritten. Without a GPU the test prints why and passes,
//! unless `HEARTH_REQUIRE_GPU=1`.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::fused::{self, GatedActivation};
use crate::quant_matvec::{quant_matvec, quant_matvec_gated, quant_matvec_group};

const HIDDEN: usize = 1024;
const FFN: usize = 2816;

struct Layer {
    norm: Tensor,
    qkv: [QTensor; 3],
    out: QTensor,
    gate: QTensor,
    up: QTensor,
    down: QTensor,
}

fn quantized(rows: usize, cols: usize, format: GgmlDType, device: &Device) -> QTensor {
    let w = Tensor::randn(0f32, 0.05, (rows, cols), &Device::Cpu).unwrap();
    QTensor::quantize_onto(&w, format, device).unwrap()
}

fn layer(device: &Device) -> Layer {
    let q4 = GgmlDType::Q4K;
    Layer {
        norm: (Tensor::randn(0f32, 0.1, HIDDEN, device).unwrap() + 1.0).unwrap().to_dtype(DType::BF16).unwrap(),
        qkv: [quantized(HIDDEN, HIDDEN, q4, device), quantized(256, HIDDEN, q4, device), quantized(256, HIDDEN, GgmlDType::Q6K, device)],
        out: quantized(HIDDEN, HIDDEN, q4, device),
        gate: quantized(FFN, HIDDEN, q4, device),
        up: quantized(FFN, HIDDEN, q4, device),
        down: quantized(HIDDEN, FFN, GgmlDType::Q6K, device),
    }
}

/// One step: per layer norm, grouped Q/K/V, a candle elementwise mix, the output product, an
/// add onto the F32 stream, norm, gated MLP, down product; then the final norm.
fn step(stream: &Tensor, layers: &[Layer]) -> candle_core::Result<Tensor> {
    let w = |e: crate::KernelError| candle_core::Error::wrap(e);
    let mut stream = stream.clone();
    for layer in layers {
        let normed = fused::rms_norm_f32_stream(&stream, &layer.norm, 1e-5).map_err(w)?;
        let qkv: Vec<&QTensor> = layer.qkv.iter().collect();
        let parts = quant_matvec_group(&qkv, &normed, None).map_err(w)?;
        let mixed = (parts[0].silu()? * 0.5)?;
        let attn = quant_matvec(&layer.out, &mixed).map_err(w)?;
        let (normed, sum) = fused::add_rms_norm_f32_residual(&attn, &stream, &layer.norm, 1e-5).map_err(w)?;
        let hidden = quant_matvec_gated(&layer.gate, &layer.up, &normed, GatedActivation::Silu, None).map_err(w)?;
        let down = quant_matvec(&layer.down, &hidden).map_err(w)?;
        stream = (sum + down.to_dtype(DType::F32)?)?;
    }
    fused::rms_norm_f32_stream(&stream, &layers[0].norm, 1e-5).map_err(w)
}

#[test]
fn a_recorded_step_replays_the_eager_results_bit_for_bit() {
    let Some(device) = crate::test_gpu() else { return };
    let layers: Vec<Layer> = (0..4).map(|_| layer(&device)).collect();
    let input = Tensor::zeros((1, HIDDEN), DType::F32, &device).unwrap();
    let (graph, recorded) = crate::graph::capture(&device, || step(&input, &layers)).unwrap();
    for seed in 0..3 {
        let x = (Tensor::randn(0f32, 1.0, (1, HIDDEN), &device).unwrap() * (1.0 + seed as f64)).unwrap();
        input.slice_set(&x, 0, 0).unwrap();
        let eager = step(&input, &layers).unwrap().to_dtype(DType::F32).unwrap();
        graph.replay().unwrap();
        let replayed = recorded.to_dtype(DType::F32).unwrap();
        let diff = (eager - &replayed).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        eprintln!("input {seed}: max abs diff between replay and eager run {diff:e}");
        assert_eq!(diff, 0.0, "input {seed}: the replay differs from the eager run");
        let magnitude = replayed.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(magnitude > 0.0 && magnitude.is_finite(), "input {seed}: degenerate output {magnitude}");
    }
}
