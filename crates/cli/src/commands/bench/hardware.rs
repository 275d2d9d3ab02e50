//! Facts about this machine and build for `hearth bench`'s header and JSON: CPU model and core
//! count, last-level cache (sizes the CPU bandwidth copy), memory, the commit, and RAPL energy
//! counters (`/sys/class/powercap/intel-rapl:*`).
//!
//! Owns: reading these from Linux's /proc and /sys, each returning `None` (or a reason) when it
//! is not there — never failing the bench. Does not own: GPU facts (NVML, `cuda.rs`).

use std::path::{Path, PathBuf};

use hearth_engine::bench::EnergyMeter;

/// The CPU's model name from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Logical CPUs this process may use.
pub fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Total memory from /proc/meminfo, bytes.
pub fn memory_total_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Size of CPU 0's highest-level cache, bytes (sysfs `cache/index*/{level,size}`).
pub fn last_level_cache_bytes() -> Option<u64> {
    let dir = Path::new("/sys/devices/system/cpu/cpu0/cache");
    let mut best: Option<(u32, u64)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let read = |name: &str| std::fs::read_to_string(entry.path().join(name)).ok();
        let (Some(level), Some(size)) = (read("level"), read("size")) else { continue };
        let (Ok(level), Some(size)) = (level.trim().parse::<u32>(), parse_cache_size(size.trim())) else { continue };
        if best.is_none_or(|(best_level, _)| level > best_level) {
            best = Some((level, size));
        }
    }
    best.map(|(_, size)| size)
}

/// "32768K" / "1M" / "512" → bytes.
fn parse_cache_size(text: &str) -> Option<u64> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let value: u64 = digits.parse().ok()?;
    let scale = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return None,
    };
    Some(value * scale)
}

/// The commit hearth was built from: `HEARTH_COMMIT` at run time if set, else what `build.rs`
/// recorded (`HEARTH_COMMIT` at build time or `git rev-parse --short HEAD`), else "unknown".
pub fn commit() -> String {
    match std::env::var("HEARTH_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_string(),
        _ => env!("HEARTH_BUILD_COMMIT").to_string(),
    }
}

/// RAPL package energy counters: the top-level `intel-rapl:N` zones (their `intel-rapl:N:M`
/// subzones are parts of them), summed; wrap-around of each counter handled.
pub struct RaplMeter {
    zones: Vec<RaplZone>,
}

struct RaplZone {
    energy_path: PathBuf,
    /// The counter wraps to 0 after this many microjoules.
    max_range_uj: u64,
    last_uj: u64,
    accumulated_uj: u64,
}

impl RaplMeter {
    pub const POWERCAP_DIR: &'static str = "/sys/class/powercap";

    /// Opens every package zone under `powercap_dir`; `Err` says why energy cannot be read.
    pub fn open(powercap_dir: &Path) -> Result<Self, String> {
        let entries = std::fs::read_dir(powercap_dir).map_err(|e| format!("RAPL: {}: {e}", powercap_dir.display()))?;
        let mut package_dirs: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| {
                e.file_name().to_str().is_some_and(|n| n.starts_with("intel-rapl:") && n.matches(':').count() == 1)
            })
            .map(|e| e.path())
            .collect();
        package_dirs.sort();
        if package_dirs.is_empty() {
            return Err(format!("RAPL: no intel-rapl:N package zone under {}", powercap_dir.display()));
        }
        let zones = package_dirs
            .iter()
            .map(|dir| {
                let energy_path = dir.join("energy_uj");
                let last_uj = read_u64(&energy_path)?;
                let max_range_uj = read_u64(&dir.join("max_energy_range_uj")).unwrap_or(u64::MAX);
                Ok(RaplZone { energy_path, max_range_uj, last_uj, accumulated_uj: 0 })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self { zones })
    }
}

impl EnergyMeter for RaplMeter {
    /// Joules since `open`, over all packages.
    fn read_joules(&mut self) -> Option<f64> {
        for zone in &mut self.zones {
            let now = read_u64(&zone.energy_path).ok()?;
            let delta = if now >= zone.last_uj {
                now - zone.last_uj
            } else {
                zone.max_range_uj.saturating_sub(zone.last_uj) + now
            };
            zone.accumulated_uj += delta;
            zone.last_uj = now;
        }
        Some(self.zones.iter().map(|z| z.accumulated_uj).sum::<u64>() as f64 / 1e6)
    }
}

fn read_u64(path: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("RAPL: {}: {e}", path.display()))?;
    text.trim().parse().map_err(|_| format!("RAPL: {} holds `{}`, not a number", path.display(), text.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(root: &Path, name: &str, energy_uj: u64, max_uj: u64) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("energy_uj"), format!("{energy_uj}\n")).unwrap();
        std::fs::write(dir.join("max_energy_range_uj"), format!("{max_uj}\n")).unwrap();
    }

    #[test]
    fn rapl_sums_packages_skips_subzones_and_survives_wraparound() {
        let root = tempfile::tempdir().unwrap();
        zone(root.path(), "intel-rapl:0", 1_000_000, 10_000_000);
        zone(root.path(), "intel-rapl:0:0", 5_000_000, 10_000_000);
        zone(root.path(), "intel-rapl:1", 9_500_000, 10_000_000);
        let mut meter = RaplMeter::open(root.path()).unwrap();
        assert_eq!(meter.read_joules(), Some(0.0));
        // Package 0: +2 J; package 1 wraps: 0.5 J to the end of its range, then 1 J.
        zone(root.path(), "intel-rapl:0", 3_000_000, 10_000_000);
        zone(root.path(), "intel-rapl:0:0", 9_000_000, 10_000_000);
        zone(root.path(), "intel-rapl:1", 1_000_000, 10_000_000);
        assert_eq!(meter.read_joules(), Some(3.5));
    }

    #[test]
    fn rapl_without_zones_says_why() {
        let root = tempfile::tempdir().unwrap();
        let err = RaplMeter::open(root.path()).err().unwrap();
        assert!(err.contains("no intel-rapl:N package zone"), "{err}");
        let err = RaplMeter::open(&root.path().join("missing")).err().unwrap();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn cache_sizes_parse_with_units() {
        assert_eq!(parse_cache_size("32768K"), Some(32 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("lots"), None);
    }
}
