//! Where models come from: a path, a name in hearth's store (`$HEARTH_HOME/models`, default
//! `~/.cache/hearth/models`), or a Hugging Face repo id found in the standard hub cache
//! (`$HF_HOME/hub` or `~/.cache/huggingface/hub`, layout `models--org--name/snapshots/REV`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The model used when none is named.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

pub fn hearth_home() -> PathBuf {
    match std::env::var_os("HEARTH_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => home_dir().join(".cache/hearth"),
    }
}

pub fn store_dir() -> PathBuf {
    hearth_home().join("models")
}

pub fn hf_hub_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HF_HOME") {
        Some(dir) => PathBuf::from(dir).join("hub"),
        None => home_dir().join(".cache/huggingface/hub"),
    }
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

/// Resolves a model argument (or the default) to a GGUF file or a Hugging Face directory.
pub fn resolve(model: Option<&str>) -> Result<PathBuf> {
    let name = model.unwrap_or(DEFAULT_MODEL);
    let as_path = Path::new(name);
    if as_path.exists() {
        return Ok(as_path.to_path_buf());
    }
    if let Some(found) = find_in_store(name) {
        return Ok(found);
    }
    if name.contains('/') {
        if let Some(found) = find_in_hf_cache(name)? {
            return Ok(found);
        }
    }
    let hint = if model.is_none() {
        "the default model is installed by `scripts/fetch-assets.sh`"
    } else {
        "give a path to a .gguf file or a Hugging Face model directory, a name from `hearth models`, or a repo id from `hearth pull`"
    };
    bail!("model `{name}` not found ({hint}); looked in {} and {}", store_dir().display(), hf_hub_dir().display())
}

/// The name a served model answers to: the store name or repo id as given, or a path's file
/// stem (`/models/qwen.gguf` -> `qwen`).
pub fn served_name(model: Option<&str>) -> String {
    let name = model.unwrap_or(DEFAULT_MODEL);
    let as_path = Path::new(name);
    if as_path.exists() {
        let stem = as_path.file_stem().or_else(|| as_path.file_name());
        if let Some(stem) = stem {
            return stem.to_string_lossy().into_owned();
        }
    }
    name.to_string()
}

fn find_in_store(name: &str) -> Option<PathBuf> {
    let dir = store_dir();
    [dir.join(name), dir.join(format!("{name}.gguf"))].into_iter().find(|p| p.exists())
}

/// The snapshot for `org/name` in the hub cache: a directory with `config.json`, or its only
/// GGUF file.
fn find_in_hf_cache(repo: &str) -> Result<Option<PathBuf>> {
    let repo_dir = hf_hub_dir().join(format!("models--{}", repo.replace('/', "--")));
    if !repo_dir.exists() {
        return Ok(None);
    }
    let snapshots = repo_dir.join("snapshots");
    let revision = std::fs::read_to_string(repo_dir.join("refs/main")).ok().map(|r| r.trim().to_string());
    let snapshot = match revision {
        Some(rev) if snapshots.join(&rev).exists() => snapshots.join(rev),
        _ => match std::fs::read_dir(&snapshots).ok().and_then(|mut d| d.next()).and_then(|e| e.ok()) {
            Some(entry) => entry.path(),
            None => return Ok(None),
        },
    };
    if snapshot.join("config.json").exists() {
        return Ok(Some(snapshot));
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(&snapshot)
        .with_context(|| format!("reading {}", snapshot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(Some(one.clone())),
        [] => Ok(None),
        many => bail!(
            "{repo} has {} GGUF files; pass one as a path: {}",
            many.len(),
            many.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Every model hearth can find: (name to pass as `--model`, path).
pub fn list() -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(store_dir()) {
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().trim_end_matches(".gguf").to_string();
            if path.exists() {
                found.push((name, path));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(hf_hub_dir()) {
        for entry in entries.flatten() {
            let dir = entry.file_name().to_string_lossy().to_string();
            if let Some(repo) = dir.strip_prefix("models--") {
                let repo = repo.replacen("--", "/", 1);
                if let Ok(Some(path)) = find_in_hf_cache(&repo) {
                    found.push((repo, path));
                }
            }
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_id_resolves_from_hf_cache_layout() {
        let home = tempfile::tempdir().unwrap();
        let snap = home.path().join("hub/models--org--tiny/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::create_dir_all(home.path().join("hub/models--org--tiny/refs")).unwrap();
        std::fs::write(home.path().join("hub/models--org--tiny/refs/main"), "abc123\n").unwrap();
        // SAFETY: this test is the only one touching HF_HUB_CACHE.
        unsafe { std::env::set_var("HF_HUB_CACHE", home.path().join("hub")) };
        assert_eq!(find_in_hf_cache("org/tiny").unwrap(), Some(snap));
        assert_eq!(find_in_hf_cache("org/absent").unwrap(), None);
    }
}
