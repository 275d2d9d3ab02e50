//! GGUF v2/v3 files, memory-mapped. Tensors are served under Hugging Face names; bytes are
//! checked to lie inside the file before anything is read.
//!
//! llama.cpp's converter permutes the rows of Llama's `q_proj`/`k_proj` so that GGUF uses
//! interleaved RoPE. We undo that permutation on the raw rows at load (rows are whole runs of
//! quantized blocks, so this works for every quant type), so one RoPE convention (Hugging
//! Face's half-split) serves every format.

use std::collections::HashMap;
use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, ggml_file, GgmlDType};
use candle_core::Device;
use memmap2::Mmap;

use super::{names, RawTensor, TensorSource};
use crate::{Architecture, ModelError, Result};

pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    pub content: gguf_file::Content,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| ModelError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the file is opened read-only; hearth never writes model files while serving
        // them. A concurrent external truncation could fault, as with any mmap-based loader.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let bad = |reason: String| ModelError::BadGguf { path: path.to_path_buf(), reason };
        if mmap.len() < 8 || &mmap[..4] != b"GGUF" {
            return Err(bad("bad magic (expected the bytes `GGUF`)".into()));
        }
        let content = gguf_file::Content::read(&mut Cursor::new(&mmap[..])).map_err(|e| bad(e.to_string()))?;
        for (name, info) in &content.tensor_infos {
            let end = tensor_byte_len(info)
                .map(|len| content.tensor_data_offset + info.offset + len as u64)
                .ok_or_else(|| bad(format!("tensor `{name}` has {} elements, not a whole number of {:?} blocks", info.shape.elem_count(), info.ggml_dtype)))?;
            if end > mmap.len() as u64 {
                return Err(bad(format!(
                    "truncated: tensor `{name}` ends at byte {end} but the file has {} bytes",
                    mmap.len()
                )));
            }
        }
        Ok(Self { path: path.to_path_buf(), mmap, content })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn architecture(&self) -> Result<String> {
        self.content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| ModelError::MissingMetadata("GGUF `general.architecture`".into()))
    }

    fn raw_bytes(&self, info: &gguf_file::TensorInfo) -> &[u8] {
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        // Lengths were checked against the file in `open`.
        let len = tensor_byte_len(info).unwrap_or(0);
        &self.mmap[start..start + len]
    }
}

fn tensor_byte_len(info: &gguf_file::TensorInfo) -> Option<usize> {
    let num_elements = info.shape.elem_count();
    let block = info.ggml_dtype.block_size();
    (num_elements % block == 0).then(|| num_elements / block * info.ggml_dtype.type_size())
}

/// A GGUF file seen through Hugging Face tensor names.
pub struct GgufSource<'a> {
    file: &'a GgufFile,
    /// Hugging Face name -> GGUF name.
    hf_to_gguf: HashMap<String, String>,
    /// Hugging Face names whose rows are RoPE-permuted, with their head counts.
    permuted: HashMap<String, usize>,
}

impl<'a> GgufSource<'a> {
    pub fn new(file: &'a GgufFile, arch: Architecture, num_heads: usize, num_kv_heads: usize) -> Self {
        let hf_to_gguf: HashMap<String, String> = file
            .content
            .tensor_infos
            .keys()
            .map(|g| (names::gguf_to_hf(arch, g).unwrap_or_else(|| g.clone()), g.clone()))
            .collect();
        let mut permuted = HashMap::new();
        if arch == Architecture::Llama {
            for name in hf_to_gguf.keys() {
                if name.ends_with("self_attn.q_proj.weight") {
                    permuted.insert(name.clone(), num_heads);
                } else if name.ends_with("self_attn.k_proj.weight") {
                    permuted.insert(name.clone(), num_kv_heads);
                }
            }
        }
        Self { file, hf_to_gguf, permuted }
    }

    fn info(&self, name: &str) -> Option<&gguf_file::TensorInfo> {
        self.file.content.tensor_infos.get(self.hf_to_gguf.get(name)?)
    }
}

impl TensorSource for GgufSource<'_> {
    fn names(&self) -> Vec<String> {
        self.hf_to_gguf.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.info(name).map(|i| i.shape.dims().to_vec())
    }

    fn type_name(&self, name: &str) -> Option<String> {
        self.info(name).map(|i| format!("{:?}", i.ggml_dtype))
    }

    fn load(&self, name: &str, device: &Device) -> Result<RawTensor> {
        let info = self.info(name).ok_or_else(|| ModelError::TensorProblems(vec![format!("missing tensor `{name}`")]))?;
        let bytes = self.file.raw_bytes(info);
        let dims = info.shape.dims().to_vec();
        let qtensor = match self.permuted.get(name) {
            Some(&num_heads) => {
                let rows = unpermute_rope_rows(bytes, &dims, num_heads, info.ggml_dtype)?;
                ggml_file::qtensor_from_ggml(info.ggml_dtype, &rows, dims, device)?
            }
            None => ggml_file::qtensor_from_ggml(info.ggml_dtype, bytes, dims, device)?,
        };
        Ok(RawTensor::Quantized(qtensor))
    }
}

/// Undoes llama.cpp's `permute`: within each head of `head_dim` rows, GGUF row `2*i + j`
/// holds Hugging Face row `j * head_dim/2 + i`.
fn unpermute_rope_rows(bytes: &[u8], dims: &[usize], num_heads: usize, dtype: GgmlDType) -> Result<Vec<u8>> {
    let bad = |m: String| ModelError::Unsupported(m);
    let [num_rows, num_cols] = dims else {
        return Err(bad(format!("RoPE-permuted weight must be 2-D, got {dims:?}")));
    };
    if num_heads == 0 || num_rows % num_heads != 0 || (num_rows / num_heads) % 2 != 0 {
        return Err(bad(format!("{num_rows} rows do not split into {num_heads} heads of even size")));
    }
    let row_bytes = num_cols / dtype.block_size() * dtype.type_size();
    let head_dim = num_rows / num_heads;
    let half = head_dim / 2;
    let mut out = vec![0u8; bytes.len()];
    for head in 0..num_heads {
        for j in 0..2 {
            for i in 0..half {
                let hf_row = head * head_dim + j * half + i;
                let gguf_row = head * head_dim + 2 * i + j;
                out[hf_row * row_bytes..(hf_row + 1) * row_bytes]
                    .copy_from_slice(&bytes[gguf_row * row_bytes..(gguf_row + 1) * row_bytes]);
            }
        }
    }
    Ok(out)
}
