//! `hearth models`: the models in hearth's store and the Hugging Face cache.

use anyhow::Result;

use crate::store;

pub fn run() -> Result<()> {
    let models = store::list();
    if models.is_empty() {
        println!("no models in {} or {}", store::store_dir().display(), store::hf_hub_dir().display());
        println!("fetch the default model with scripts/fetch-assets.sh, or `hearth pull REPO`");
        return Ok(());
    }
    for (name, path) in models {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let size = if path.is_dir() { String::from("dir") } else { format!("{:.0} MiB", size as f64 / (1 << 20) as f64) };
        let default = if name == store::DEFAULT_MODEL { " (default)" } else { "" };
        println!("{name:<40} {size:>9}  {}{default}", path.display());
    }
    Ok(())
}
