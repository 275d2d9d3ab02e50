//! Hugging Face safetensors weights: one `model.safetensors` or shards listed by
//! `model.safetensors.index.json`, memory-mapped through candle.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::Device;

use super::{RawTensor, TensorSource};
use crate::{ModelError, Result};

pub struct SafetensorsSource {
    files: MmapedSafetensors,
}

impl SafetensorsSource {
    /// Opens the weights of a Hugging Face model directory.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let paths = weight_files(dir)?;
        let bad = |reason: String| ModelError::BadSafetensors { path: dir.to_path_buf(), reason };
        // SAFETY: read-only maps of model files that hearth never writes while loaded.
        let files = unsafe { MmapedSafetensors::multi(&paths) }.map_err(|e| bad(e.to_string()))?;
        Ok(Self { files })
    }
}

/// The safetensors files of a directory: the shards named by the index, or `model.safetensors`,
/// or every `*.safetensors` file.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io { path: index.clone(), source })?;
        let bad = |reason: String| ModelError::BadSafetensors { path: index.clone(), reason };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no `weight_map` object".into()))?;
        let mut shards: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|s| dir.join(s)).collect();
        shards.sort();
        shards.dedup();
        if let Some(missing) = shards.iter().find(|p| !p.exists()) {
            return Err(bad(format!("shard {} is missing", missing.display())));
        }
        return Ok(shards);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    all.sort();
    if all.is_empty() {
        return Err(ModelError::BadSafetensors { path: dir.to_path_buf(), reason: "no *.safetensors files".into() });
    }
    Ok(all)
}

impl TensorSource for SafetensorsSource {
    fn names(&self) -> Vec<String> {
        self.files.tensors().into_iter().map(|(n, _)| n).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.files.get(name).ok().map(|v| v.shape().to_vec())
    }

    fn type_name(&self, name: &str) -> Option<String> {
        self.files.get(name).ok().map(|v| format!("{:?}", v.dtype()))
    }

    fn load(&self, name: &str, device: &Device) -> Result<RawTensor> {
        Ok(RawTensor::Dense(self.files.load(name, device)?))
    }
}
