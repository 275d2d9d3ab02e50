//! The GGUF v3 header, written before any tensor data exists, so tensors can be streamed to the
//! file one after another (candle's `gguf_file::write` needs every tensor in memory).
//!
//! Layout (ggml's `gguf.h`, little-endian): magic `GGUF`, version 3, tensor count (u64),
//! metadata count (u64), the metadata (key, type, value), the tensor infos (name, dims in ggml
//! order — innermost first —, ggml type id, offset from the data start), zero padding to
//! [`ALIGNMENT`], then each tensor's bytes, each padded to [`ALIGNMENT`].
//!
//! Invariant: the offsets written here are exactly where [`data_layout`] says each tensor
//! starts; the data writer checks its position against them.

use std::io::{self, Write};
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;

use crate::{ModelError, Result};

/// Data alignment (GGUF's default; we write no `general.alignment`).
pub const ALIGNMENT: u64 = 32;

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;

/// Zero bytes that take `len` to the next multiple of [`ALIGNMENT`].
pub fn padding(len: u64) -> u64 {
    len.next_multiple_of(ALIGNMENT) - len
}

/// ggml's `ggml_type` id.
pub fn ggml_type_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// Bytes of a tensor of `dims` (row-major) stored as `dtype`; rows must be whole blocks.
pub fn tensor_num_bytes(name: &str, dims: &[usize], dtype: GgmlDType) -> Result<u64> {
    let row_len = dims.last().copied().unwrap_or(1);
    if row_len % dtype.block_size() != 0 {
        return Err(ModelError::Unsupported(format!(
            "tensor `{name}`: rows of {row_len} are not whole {dtype:?} blocks of {}",
            dtype.block_size()
        )));
    }
    let num_elements: u64 = dims.iter().map(|&d| d as u64).product();
    Ok(num_elements / dtype.block_size() as u64 * dtype.type_size() as u64)
}

/// What the header says about one tensor.
pub struct TensorHeader<'a> {
    pub name: &'a str,
    /// Row-major (PyTorch) order; written reversed, as ggml counts dims innermost first.
    pub dims: &'a [usize],
    pub dtype: GgmlDType,
}

/// Offsets of each tensor from the data start, and the data section's total (padded) length.
pub fn data_layout(tensors: &[TensorHeader]) -> Result<(Vec<u64>, u64)> {
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        offsets.push(offset);
        let len = tensor_num_bytes(t.name, t.dims, t.dtype)?;
        offset += len + padding(len);
    }
    Ok((offsets, offset))
}

/// Writes everything before the tensor data, padding included, to `w` (the file at `path`,
/// named in errors). Returns the header's length (where the data starts) and each tensor's
/// offset from there.
pub fn write_header<W: Write>(
    w: &mut W,
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[TensorHeader],
) -> Result<(u64, Vec<u64>)> {
    let (offsets, _) = data_layout(tensors)?;
    for (key, value) in metadata {
        check_homogeneous(key, value)?;
    }
    let mut out = CountingWriter { inner: w, written: 0 };
    write_header_bytes(&mut out, metadata, tensors, &offsets)
        .map_err(|source| ModelError::Write { path: path.to_path_buf(), source })?;
    Ok((out.written, offsets))
}

fn write_header_bytes<W: Write>(
    out: &mut CountingWriter<W>,
    metadata: &[(String, Value)],
    tensors: &[TensorHeader],
    offsets: &[u64],
) -> io::Result<()> {
    out.write_all(MAGIC)?;
    out.write_all(&VERSION.to_le_bytes())?;
    out.write_all(&(tensors.len() as u64).to_le_bytes())?;
    out.write_all(&(metadata.len() as u64).to_le_bytes())?;
    for (key, value) in metadata {
        write_string(out, key)?;
        out.write_all(&value_type_id(value).to_le_bytes())?;
        write_value(out, value)?;
    }
    for (t, offset) in tensors.iter().zip(offsets) {
        write_string(out, t.name)?;
        out.write_all(&(t.dims.len() as u32).to_le_bytes())?;
        for &dim in t.dims.iter().rev() {
            out.write_all(&(dim as u64).to_le_bytes())?;
        }
        out.write_all(&ggml_type_id(t.dtype).to_le_bytes())?;
        out.write_all(&offset.to_le_bytes())?;
    }
    let pad = padding(out.written);
    out.write_all(&vec![0u8; pad as usize])
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_string<W: Write>(w: &mut W, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn value_type_id(value: &Value) -> u32 {
    match value {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// GGUF arrays hold one type; an empty one may claim any.
fn check_homogeneous(key: &str, value: &Value) -> Result<()> {
    let Value::Array(items) = value else { return Ok(()) };
    if let Some(first) = items.first() {
        if let Some(odd) = items.iter().find(|v| value_type_id(v) != value_type_id(first)) {
            return Err(ModelError::Unsupported(format!(
                "GGUF metadata `{key}`: array mixes {:?} and {:?} values",
                first.value_type(),
                odd.value_type()
            )));
        }
    }
    items.iter().try_for_each(|item| check_homogeneous(key, item))
}

fn write_value<W: Write>(w: &mut W, value: &Value) -> io::Result<()> {
    match value {
        Value::U8(v) => w.write_all(&v.to_le_bytes()),
        Value::I8(v) => w.write_all(&v.to_le_bytes()),
        Value::U16(v) => w.write_all(&v.to_le_bytes()),
        Value::I16(v) => w.write_all(&v.to_le_bytes()),
        Value::U32(v) => w.write_all(&v.to_le_bytes()),
        Value::I32(v) => w.write_all(&v.to_le_bytes()),
        Value::U64(v) => w.write_all(&v.to_le_bytes()),
        Value::I64(v) => w.write_all(&v.to_le_bytes()),
        Value::F32(v) => w.write_all(&v.to_le_bytes()),
        Value::F64(v) => w.write_all(&v.to_le_bytes()),
        Value::Bool(v) => w.write_all(&[u8::from(*v)]),
        Value::String(s) => write_string(w, s),
        Value::Array(items) => {
            let item_type = items.first().map_or(value_type_id(&Value::U32(0)), value_type_id);
            w.write_all(&item_type.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|item| write_value(w, item))
        }
    }
}
