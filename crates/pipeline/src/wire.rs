//! The pipeline's messages and their compact binary encoding, carried as the payload of
//! `Activation` frames on an authenticated cluster `Connection` (`Purpose::Data`).
//!
//! Layout (`KvLayer` in `Kv` frames, everything else in `Activation` frames): one tag byte,
//! then the message's fields; integers little-endian (`u32` counts and
//! ids, `u64` step ids); a tensor is `[dtype: u8][num_dims: u8][dims: u32 each][raw elements,
//! little-endian]`. The frame layer has already bounded the payload's size; this module checks
//! every length against the bytes actually present before allocating, so a malformed payload
//! is a `Malformed` error naming what was wrong, never a panic or an outsized allocation.
//!
//! Owns: `StageMessage`, `StageResources`, `WireTensor` and their bytes (floats as IEEE bits). Does not own: frames, sockets,
//! timeouts (`hearth-cluster`), what a stage does with a step (`stage_server`).

use candle_core::{DType, Device, Tensor};
use hearth_models::SequenceInput;

use crate::error::{PipelineError, Result};

/// Most dimensions a wire tensor may have (hidden states and logits have two).
const MAX_DIMS: usize = 4;

/// A tensor as raw little-endian elements; F32, F16 or BF16.
#[derive(Debug, Clone, PartialEq)]
pub struct WireTensor {
    pub dtype: DType,
    pub dims: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// What a stage reports about itself when a coordinator opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageDescription {
    pub layer_start: u32,
    pub layer_end: u32,
    /// The whole model's shape, so the coordinator can check every stage serves one model.
    pub num_layers: u32,
    pub hidden_size: u32,
    pub vocab_size: u32,
}

/// What a stage offers the planner, and the model it was started with.
#[derive(Debug, Clone, PartialEq)]
pub struct StageResources {
    /// Memory the stage may fill with weights and KV.
    pub memory_bytes: u64,
    /// Memory bandwidth (read + write bytes per second).
    pub bandwidth_bytes_per_s: f64,
    pub flops_per_s: f64,
    pub num_layers: u32,
    pub hidden_size: u32,
    pub vocab_size: u32,
    /// The layers it was started with (`hearth stage --layers`); `None`: it loads what it is
    /// asked to.
    pub fixed_layers: Option<(u32, u32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StageMessage {
    /// Coordinator → stage: what do you offer? Answered by `Resources`.
    Describe,
    /// Stage → coordinator.
    Resources(StageResources),
    /// Coordinator → stage: serve layers `layer_start..layer_end` (loading them if the stage
    /// loads on demand) with a KV pool of this shape (the coordinator's scheduler owns its
    /// blocks); answered by `Ready` or `Failed`.
    Open { layer_start: u32, layer_end: u32, num_blocks: u32, block_size: u32 },
    /// Stage → coordinator.
    Ready(StageDescription),
    /// Coordinator → stage: run one step. `hidden` is the previous stage's output; absent for
    /// the first stage, which embeds the token ids.
    Step { step_id: u64, sequences: Vec<SequenceInput>, hidden: Option<WireTensor> },
    /// Stage → coordinator while a step computes, at least every busy interval: "alive".
    Busy { step_id: u64 },
    /// Stage → coordinator: the step's hidden state (a middle stage) or F32 logits (the last).
    Output { step_id: u64, kind: OutputKind, tensor: WireTensor },
    /// Stage → coordinator: the step (or the open) failed; the stage stays usable.
    Failed { step_id: u64, message: String },
    /// Coordinator → stage: send the K/V of these blocks (split prefill/decode: the prefill
    /// node hands a computed prompt to the decode node); answered by one `KvLayer` per layer
    /// of the stage, in layer order (`Busy` may come between), or `Failed`.
    ExportKv { step_id: u64, block_ids: Vec<u32> },
    /// Stage → coordinator: one layer's K and V of the requested blocks,
    /// `[num_blocks, block_size, num_kv_heads, head_dim]` each. Sent in a `Kv` frame.
    KvLayer { step_id: u64, layer_idx: u32, k: WireTensor, v: WireTensor },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Hidden,
    Logits,
}

const TAG_OPEN: u8 = 1;
const TAG_READY: u8 = 2;
const TAG_STEP: u8 = 3;
const TAG_BUSY: u8 = 4;
const TAG_OUTPUT: u8 = 5;
const TAG_FAILED: u8 = 6;
const TAG_DESCRIBE: u8 = 7;
const TAG_RESOURCES: u8 = 8;
const TAG_EXPORT_KV: u8 = 9;
const TAG_KV_LAYER: u8 = 10;

impl StageMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Describe => out.push(TAG_DESCRIBE),
            Self::Resources(r) => {
                out.push(TAG_RESOURCES);
                out.extend_from_slice(&r.memory_bytes.to_le_bytes());
                out.extend_from_slice(&r.bandwidth_bytes_per_s.to_le_bytes());
                out.extend_from_slice(&r.flops_per_s.to_le_bytes());
                for value in [r.num_layers, r.hidden_size, r.vocab_size] {
                    put_u32(&mut out, value);
                }
                match r.fixed_layers {
                    Some((start, end)) => {
                        out.push(1);
                        put_u32(&mut out, start);
                        put_u32(&mut out, end);
                    }
                    None => out.push(0),
                }
            }
            Self::Open { layer_start, layer_end, num_blocks, block_size } => {
                out.push(TAG_OPEN);
                for value in [*layer_start, *layer_end, *num_blocks, *block_size] {
                    put_u32(&mut out, value);
                }
            }
            Self::Ready(d) => {
                out.push(TAG_READY);
                for value in [d.layer_start, d.layer_end, d.num_layers, d.hidden_size, d.vocab_size] {
                    put_u32(&mut out, value);
                }
            }
            Self::Step { step_id, sequences, hidden } => {
                out.push(TAG_STEP);
                out.extend_from_slice(&step_id.to_le_bytes());
                put_u32(&mut out, sequences.len() as u32);
                for s in sequences {
                    put_u32(&mut out, s.num_cached_tokens as u32);
                    out.push(u8::from(s.wants_logits));
                    put_u32s(&mut out, &s.new_token_ids);
                    put_u32s(&mut out, &s.block_table);
                }
                match hidden {
                    Some(tensor) => {
                        out.push(1);
                        put_tensor(&mut out, tensor);
                    }
                    None => out.push(0),
                }
            }
            Self::Busy { step_id } => {
                out.push(TAG_BUSY);
                out.extend_from_slice(&step_id.to_le_bytes());
            }
            Self::Output { step_id, kind, tensor } => {
                out.push(TAG_OUTPUT);
                out.extend_from_slice(&step_id.to_le_bytes());
                out.push(match kind {
                    OutputKind::Hidden => 0,
                    OutputKind::Logits => 1,
                });
                put_tensor(&mut out, tensor);
            }
            Self::ExportKv { step_id, block_ids } => {
                out.push(TAG_EXPORT_KV);
                out.extend_from_slice(&step_id.to_le_bytes());
                put_u32s(&mut out, block_ids);
            }
            Self::KvLayer { step_id, layer_idx, k, v } => {
                out.push(TAG_KV_LAYER);
                out.extend_from_slice(&step_id.to_le_bytes());
                put_u32(&mut out, *layer_idx);
                put_tensor(&mut out, k);
                put_tensor(&mut out, v);
            }
            Self::Failed { step_id, message } => {
                out.push(TAG_FAILED);
                out.extend_from_slice(&step_id.to_le_bytes());
                put_u32(&mut out, message.len() as u32);
                out.extend_from_slice(message.as_bytes());
            }
        }
        out
    }

    pub fn decode(payload: &[u8]) -> Result<Self> {
        let mut r = Reader { bytes: payload, pos: 0 };
        let message = match r.u8("message tag")? {
            TAG_DESCRIBE => Self::Describe,
            TAG_RESOURCES => Self::Resources(StageResources {
                memory_bytes: r.u64("memory_bytes")?,
                bandwidth_bytes_per_s: f64::from_bits(r.u64("bandwidth")?),
                flops_per_s: f64::from_bits(r.u64("flops")?),
                num_layers: r.u32("num_layers")?,
                hidden_size: r.u32("hidden_size")?,
                vocab_size: r.u32("vocab_size")?,
                fixed_layers: match r.u8("fixed layers flag")? {
                    0 => None,
                    1 => Some((r.u32("fixed layer_start")?, r.u32("fixed layer_end")?)),
                    other => return Err(malformed(format!("fixed layers flag is {other}, not 0 or 1"))),
                },
            }),
            TAG_OPEN => Self::Open {
                layer_start: r.u32("layer_start")?,
                layer_end: r.u32("layer_end")?,
                num_blocks: r.u32("num_blocks")?,
                block_size: r.u32("block_size")?,
            },
            TAG_READY => Self::Ready(StageDescription {
                layer_start: r.u32("layer_start")?,
                layer_end: r.u32("layer_end")?,
                num_layers: r.u32("num_layers")?,
                hidden_size: r.u32("hidden_size")?,
                vocab_size: r.u32("vocab_size")?,
            }),
            TAG_STEP => {
                let step_id = r.u64("step_id")?;
                let num_sequences = r.count("sequences", 4 + 1 + 4 + 4)?;
                let mut sequences = Vec::with_capacity(num_sequences);
                for _ in 0..num_sequences {
                    let num_cached_tokens = r.u32("num_cached_tokens")? as usize;
                    let wants_logits = match r.u8("wants_logits")? {
                        0 => false,
                        1 => true,
                        other => return Err(malformed(format!("wants_logits is {other}, not 0 or 1"))),
                    };
                    let new_token_ids = r.u32s("new_token_ids")?;
                    let block_table = r.u32s("block_table")?;
                    sequences.push(SequenceInput { new_token_ids, num_cached_tokens, block_table, wants_logits });
                }
                let hidden = match r.u8("hidden flag")? {
                    0 => None,
                    1 => Some(r.tensor()?),
                    other => return Err(malformed(format!("hidden flag is {other}, not 0 or 1"))),
                };
                Self::Step { step_id, sequences, hidden }
            }
            TAG_BUSY => Self::Busy { step_id: r.u64("step_id")? },
            TAG_OUTPUT => {
                let step_id = r.u64("step_id")?;
                let kind = match r.u8("output kind")? {
                    0 => OutputKind::Hidden,
                    1 => OutputKind::Logits,
                    other => return Err(malformed(format!("output kind {other} is unknown"))),
                };
                Self::Output { step_id, kind, tensor: r.tensor()? }
            }
            TAG_EXPORT_KV => Self::ExportKv { step_id: r.u64("step_id")?, block_ids: r.u32s("block_ids")? },
            TAG_KV_LAYER => Self::KvLayer {
                step_id: r.u64("step_id")?,
                layer_idx: r.u32("layer_idx")?,
                k: r.tensor()?,
                v: r.tensor()?,
            },
            TAG_FAILED => {
                let step_id = r.u64("step_id")?;
                let len = r.count("failure message", 1)?;
                let bytes = r.take(len, "failure message")?;
                let message = String::from_utf8_lossy(bytes).into_owned();
                Self::Failed { step_id, message }
            }
            other => return Err(malformed(format!("unknown message tag {other}"))),
        };
        if r.pos != payload.len() {
            return Err(malformed(format!("{} trailing bytes after the message", payload.len() - r.pos)));
        }
        Ok(message)
    }

    /// A short name for errors ("a step", "an output").
    pub fn name(&self) -> &'static str {
        match self {
            Self::Describe => "a describe",
            Self::Resources(_) => "a resources",
            Self::Open { .. } => "an open",
            Self::Ready(_) => "a ready",
            Self::Step { .. } => "a step",
            Self::Busy { .. } => "a busy",
            Self::Output { .. } => "an output",
            Self::Failed { .. } => "a failure",
            Self::ExportKv { .. } => "a KV export",
            Self::KvLayer { .. } => "a KV layer",
        }
    }
}

impl WireTensor {
    /// Copies `tensor` (any device, F32/F16/BF16) to host bytes.
    pub fn from_tensor(tensor: &Tensor) -> Result<Self> {
        let flat = tensor.flatten_all()?.to_device(&Device::Cpu)?;
        let bytes: Vec<u8> = match tensor.dtype() {
            DType::F32 => flat.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F16 => flat.to_vec1::<half::f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::BF16 => flat.to_vec1::<half::bf16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
            other => return Err(PipelineError::Protocol(format!("cannot send a {other:?} tensor (F32, F16 or BF16 only)"))),
        };
        Ok(Self { dtype: tensor.dtype(), dims: tensor.dims().to_vec(), bytes })
    }

    /// The tensor on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let tensor = match self.dtype {
            DType::F32 => {
                let values: Vec<f32> = self.bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                Tensor::from_vec(values, self.dims.as_slice(), device)?
            }
            DType::F16 => {
                let values: Vec<half::f16> = self.bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]])).collect();
                Tensor::from_vec(values, self.dims.as_slice(), device)?
            }
            DType::BF16 => {
                let values: Vec<half::bf16> = self.bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]])).collect();
                Tensor::from_vec(values, self.dims.as_slice(), device)?
            }
            other => return Err(PipelineError::Protocol(format!("cannot build a {other:?} tensor"))),
        };
        Ok(tensor)
    }
}

fn dtype_code(dtype: DType) -> u8 {
    match dtype {
        DType::F16 => 1,
        DType::BF16 => 2,
        _ => 0,
    }
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u32s(out: &mut Vec<u8>, values: &[u32]) {
    put_u32(out, values.len() as u32);
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
}

fn put_tensor(out: &mut Vec<u8>, tensor: &WireTensor) {
    out.push(dtype_code(tensor.dtype));
    out.push(tensor.dims.len() as u8);
    for &dim in &tensor.dims {
        put_u32(out, dim as u32);
    }
    out.extend_from_slice(&tensor.bytes);
}

fn malformed(what: String) -> PipelineError {
    PipelineError::Malformed(what)
}

/// A cursor over a payload; every read checks the bytes are there.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8]> {
        let remaining = self.bytes.len() - self.pos;
        if len > remaining {
            return Err(malformed(format!("truncated {what}: needs {len} bytes, {remaining} left")));
        }
        let slice = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(slice)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    /// A `u32` count of items at least `min_item_bytes` each, checked against what is left.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize> {
        let count = self.u32(what)? as usize;
        let remaining = self.bytes.len() - self.pos;
        if count.saturating_mul(min_item_bytes) > remaining {
            return Err(malformed(format!("{count} {what} cannot fit in the {remaining} bytes left")));
        }
        Ok(count)
    }

    fn u32s(&mut self, what: &str) -> Result<Vec<u32>> {
        let count = self.count(what, 4)?;
        let bytes = self.take(count * 4, what)?;
        Ok(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    fn tensor(&mut self) -> Result<WireTensor> {
        let (dtype, element_bytes) = match self.u8("tensor dtype")? {
            0 => (DType::F32, 4),
            1 => (DType::F16, 2),
            2 => (DType::BF16, 2),
            other => return Err(malformed(format!("unknown tensor dtype code {other}"))),
        };
        let num_dims = self.u8("tensor rank")? as usize;
        if num_dims > MAX_DIMS {
            return Err(malformed(format!("a tensor of {num_dims} dimensions (at most {MAX_DIMS})")));
        }
        let dims = (0..num_dims).map(|_| self.u32("tensor dimension").map(|d| d as usize)).collect::<Result<Vec<_>>>()?;
        let num_bytes = dims
            .iter()
            .try_fold(element_bytes, |acc: usize, &d| acc.checked_mul(d))
            .ok_or_else(|| malformed(format!("tensor shape {dims:?} overflows")))?;
        let bytes = self.take(num_bytes, "tensor data")?.to_vec();
        Ok(WireTensor { dtype, dims, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> StageMessage {
        let tensor = Tensor::arange(0f32, 12.0, &Device::Cpu).unwrap().reshape((3, 4)).unwrap();
        StageMessage::Step {
            step_id: 7,
            sequences: vec![
                SequenceInput { new_token_ids: vec![5, 6], num_cached_tokens: 0, block_table: vec![3], wants_logits: true },
                SequenceInput { new_token_ids: vec![9], num_cached_tokens: 17, block_table: vec![0, 1, 2, 4, 8], wants_logits: false },
            ],
            hidden: Some(WireTensor::from_tensor(&tensor).unwrap()),
        }
    }

    #[test]
    fn every_message_survives_encode_then_decode() {
        let logits = Tensor::new(&[[1.5f32, -2.0], [0.25, 8.0]], &Device::Cpu).unwrap();
        let messages = [
            StageMessage::Describe,
            StageMessage::Resources(StageResources {
                memory_bytes: 1 << 34,
                bandwidth_bytes_per_s: 4.5e11,
                flops_per_s: 1.25e13,
                num_layers: 30,
                hidden_size: 576,
                vocab_size: 49152,
                fixed_layers: Some((10, 20)),
            }),
            StageMessage::Open { layer_start: 3, layer_end: 9, num_blocks: 100, block_size: 16 },
            StageMessage::Ready(StageDescription { layer_start: 2, layer_end: 4, num_layers: 6, hidden_size: 64, vocab_size: 512 }),
            step(),
            StageMessage::Step { step_id: 1, sequences: vec![], hidden: None },
            StageMessage::Busy { step_id: 3 },
            StageMessage::Output { step_id: 9, kind: OutputKind::Logits, tensor: WireTensor::from_tensor(&logits).unwrap() },
            StageMessage::Failed { step_id: 2, message: "KV pool: block 99 out of range".into() },
            StageMessage::ExportKv { step_id: 4, block_ids: vec![7, 3, 12] },
            StageMessage::KvLayer {
                step_id: 4,
                layer_idx: 1,
                k: WireTensor::from_tensor(&logits).unwrap(),
                v: WireTensor::from_tensor(&logits).unwrap(),
            },
        ];
        for message in messages {
            assert_eq!(StageMessage::decode(&message.encode()).unwrap(), message);
        }
    }

    #[test]
    fn tensors_keep_their_values_bit_for_bit() {
        let values = [0.1f32, -3.5e-7, f32::MAX, 1.0 / 3.0, -0.0, 42.0];
        let tensor = Tensor::new(&values, &Device::Cpu).unwrap().reshape((2, 3)).unwrap();
        let back = WireTensor::from_tensor(&tensor).unwrap().to_tensor(&Device::Cpu).unwrap();
        assert_eq!(back.dims(), &[2, 3]);
        let got: Vec<u32> = back.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, values.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        let bf16 = tensor.to_dtype(DType::BF16).unwrap();
        let back = WireTensor::from_tensor(&bf16).unwrap().to_tensor(&Device::Cpu).unwrap();
        assert_eq!(back.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap(), bf16.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap());
    }

    #[test]
    fn every_truncation_of_a_step_is_an_error_not_a_panic() {
        let bytes = step().encode();
        for len in 0..bytes.len() {
            let err = StageMessage::decode(&bytes[..len]).unwrap_err();
            assert!(matches!(err, PipelineError::Malformed(_)), "prefix of {len} bytes: {err}");
        }
    }

    #[test]
    fn lying_lengths_and_unknown_codes_are_refused_with_what_was_wrong() {
        let mut huge_count = vec![TAG_STEP];
        huge_count.extend_from_slice(&1u64.to_le_bytes());
        huge_count.extend_from_slice(&u32::MAX.to_le_bytes());
        let message = StageMessage::decode(&huge_count).unwrap_err().to_string();
        assert!(message.contains("cannot fit"), "{message}");
        assert!(StageMessage::decode(&[99]).unwrap_err().to_string().contains("unknown message tag 99"));
        let mut trailing = StageMessage::Busy { step_id: 1 }.encode();
        trailing.push(0);
        assert!(StageMessage::decode(&trailing).unwrap_err().to_string().contains("trailing"));
        let mut bad_dtype = vec![TAG_OUTPUT];
        bad_dtype.extend_from_slice(&1u64.to_le_bytes());
        bad_dtype.extend_from_slice(&[1, 7, 1]);
        assert!(StageMessage::decode(&bad_dtype).unwrap_err().to_string().contains("dtype code 7"));
        let mut overflow = vec![TAG_OUTPUT];
        overflow.extend_from_slice(&1u64.to_le_bytes());
        overflow.extend_from_slice(&[1, 0, 4]);
        for _ in 0..4 {
            overflow.extend_from_slice(&u32::MAX.to_le_bytes());
        }
        let message = StageMessage::decode(&overflow).unwrap_err().to_string();
        assert!(message.contains("overflows") || message.contains("truncated"), "{message}");
    }
}
