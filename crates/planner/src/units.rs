//! Quantities as people write them (`64GiB`, `400GB/s`, `10Gbit/s`, `0.2ms`) and back.
//!
//! Owns: parsing sizes, bandwidths and durations, custom node specs
//! (`name:mem=64GiB,bw=400GB/s,tflops=30[,power=300W]`, several joined by `;`) and link specs
//! (`latency=0.2ms,bw=10Gbit/s`); formatting bytes, bandwidths and durations for tables.
//! Does not own: the hardware table (`hardware`) or validation beyond "is a positive, finite
//! number with a known unit" (`cluster` validates nodes and links as a whole).
//!
//! Conventions: `KB/MB/GB/TB` are powers of 1000, `KiB/MiB/GiB/TiB` powers of 1024; a bandwidth
//! in bytes is `B/s`-suffixed (`GB/s`), in bits `bit/s` or `bps` (`Gbit/s`, `Gbps`).
//! Prefixes are case-insensitive; a bandwidth like `Gb/s` (lower-case `b`) is refused as
//! ambiguous.

use crate::cluster::{Link, NodeSpec};
use crate::error::{PlanError, Result};

fn parse_error(what: &'static str, input: &str, reason: impl Into<String>) -> PlanError {
    PlanError::Parse {
        what,
        input: input.to_string(),
        reason: reason.into(),
    }
}

/// Splits `"64GiB"` into `(64.0, "GiB")`.
fn split_number(what: &'static str, input: &str) -> Result<(f64, String)> {
    let text = input.trim();
    let split_at = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_' || c == 'e' || c == 'E'))
        .unwrap_or(text.len());
    // `e` may start a unit (`eB` is not one we know), so only treat it as an exponent when a
    // digit follows.
    let (mut number, mut unit) = text.split_at(split_at);
    if let Some(idx) = number.find(['e', 'E']) {
        if !number[idx + 1..].starts_with(|c: char| c.is_ascii_digit()) {
            (number, unit) = text.split_at(idx);
        }
    }
    let value: f64 = number
        .replace('_', "")
        .parse()
        .map_err(|_| parse_error(what, input, "expected a number followed by a unit"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(parse_error(
            what,
            input,
            "must be a finite, non-negative number",
        ));
    }
    Ok((value, unit.trim().to_string()))
}

fn byte_multiplier(unit: &str) -> Option<f64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    })
}

/// A size: `64GiB`, `512GB`, `1.5TiB`, `1000` (bytes).
pub fn parse_bytes(input: &str) -> Result<u64> {
    let (value, unit) = split_number("size", input)?;
    let multiplier = byte_multiplier(&unit).ok_or_else(|| {
        parse_error(
            "size",
            input,
            format!("unknown unit `{unit}` (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
        )
    })?;
    let bytes = value * multiplier;
    if bytes >= u64::MAX as f64 {
        return Err(parse_error("size", input, "too large"));
    }
    Ok(bytes as u64)
}

/// A bandwidth in bytes per second: `400GB/s`, `3.35TB/s`, `10Gbit/s`, `25Gbps`.
pub fn parse_bandwidth(input: &str) -> Result<f64> {
    let (value, unit) = split_number("bandwidth", input)?;
    let lower = unit.to_ascii_lowercase();
    let bits = |prefix: &str| -> Option<f64> {
        Some(
            match prefix {
                "" => 1.0,
                "k" => 1e3,
                "m" => 1e6,
                "g" => 1e9,
                "t" => 1e12,
                _ => return None,
            } / 8.0,
        )
    };
    let multiplier = if let Some(prefix) = lower
        .strip_suffix("bit/s")
        .or_else(|| lower.strip_suffix("bps"))
    {
        bits(prefix)
    } else if let Some(bytes_unit) = unit.strip_suffix("/s") {
        if bytes_unit.len() > 1 && bytes_unit.ends_with('b') {
            return Err(parse_error(
                "bandwidth",
                input,
                format!("`{unit}` is ambiguous: write bytes as GB/s or bits as Gbit/s"),
            ));
        }
        byte_multiplier(bytes_unit)
    } else {
        None
    };
    let multiplier = multiplier.ok_or_else(|| {
        parse_error(
            "bandwidth",
            input,
            format!("unknown unit `{unit}` (use e.g. GB/s, GiB/s, Gbit/s or Gbps)"),
        )
    })?;
    let bytes_per_s = value * multiplier;
    if bytes_per_s <= 0.0 {
        return Err(parse_error("bandwidth", input, "must be positive"));
    }
    Ok(bytes_per_s)
}

/// A duration in seconds: `0.2ms`, `150us`, `150µs`, `1s`.
pub fn parse_seconds(input: &str) -> Result<f64> {
    let (value, unit) = split_number("duration", input)?;
    let multiplier = match unit.as_str() {
        "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        _ => {
            return Err(parse_error(
                "duration",
                input,
                format!("unknown unit `{unit}` (use s, ms, us or ns)"),
            ))
        }
    };
    Ok(value * multiplier)
}

/// `key=value` pairs separated by commas, each key at most once.
fn key_values<'a>(what: &'static str, input: &'a str) -> Result<Vec<(&'a str, &'a str)>> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| parse_error(what, input, format!("`{part}` is not key=value")))?;
        let key = key.trim();
        if pairs.iter().any(|(k, _)| *k == key) {
            return Err(parse_error(what, input, format!("`{key}` is given twice")));
        }
        pairs.push((key, value.trim()));
    }
    Ok(pairs)
}

/// One custom node: `name:mem=64GiB,bw=400GB/s,tflops=30[,power=300W]`. `mem` is the memory the
/// model may use, `bw` its memory bandwidth, `tflops` its dense 16-bit compute.
pub fn parse_node_spec(input: &str) -> Result<NodeSpec> {
    let (name, rest) = input
        .split_once(':')
        .ok_or_else(|| parse_error("node", input, "expected name:mem=…,bw=…,tflops=…"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(parse_error("node", input, "the node has no name"));
    }
    let (mut memory, mut bandwidth, mut tflops, mut power) = (None, None, None, None);
    for (key, value) in key_values("node", rest)? {
        match key {
            "mem" | "memory" => memory = Some(parse_bytes(value)?),
            "bw" | "bandwidth" => bandwidth = Some(parse_bandwidth(value)?),
            "tflops" => {
                let (number, unit) = split_number("tflops", value)?;
                if !unit.is_empty() {
                    return Err(parse_error(
                        "tflops",
                        value,
                        "give a plain number of TFLOP/s",
                    ));
                }
                tflops = Some(number);
            }
            "power" => {
                let (watts, unit) = split_number("power", value)?;
                if !(unit.is_empty() || unit.eq_ignore_ascii_case("w")) {
                    return Err(parse_error("power", value, "give watts, e.g. 300W"));
                }
                power = Some(watts);
            }
            other => {
                return Err(parse_error(
                    "node",
                    input,
                    format!("unknown key `{other}` (known: mem, bw, tflops, power)"),
                ))
            }
        }
    }
    let missing = |key: &str| parse_error("node", input, format!("`{key}=` is missing"));
    Ok(NodeSpec {
        name: name.to_string(),
        memory_bytes: memory.ok_or_else(|| missing("mem"))?,
        bandwidth_bytes_per_s: bandwidth.ok_or_else(|| missing("bw"))?,
        flops_per_s: tflops.ok_or_else(|| missing("tflops"))? * 1e12,
        power_watts: power,
    })
}

/// Several custom nodes separated by `;`.
pub fn parse_node_specs(input: &str) -> Result<Vec<NodeSpec>> {
    let specs: Vec<NodeSpec> = input
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_node_spec)
        .collect::<Result<_>>()?;
    if specs.is_empty() {
        return Err(parse_error("nodes", input, "no node given"));
    }
    Ok(specs)
}

/// A link: `latency=0.2ms,bw=10Gbit/s` (both keys required).
pub fn parse_link(input: &str) -> Result<Link> {
    let (mut latency, mut bandwidth) = (None, None);
    for (key, value) in key_values("link", input)? {
        match key {
            "latency" | "lat" => latency = Some(parse_seconds(value)?),
            "bw" | "bandwidth" => bandwidth = Some(parse_bandwidth(value)?),
            other => {
                return Err(parse_error(
                    "link",
                    input,
                    format!("unknown key `{other}` (known: latency, bw)"),
                ))
            }
        }
    }
    let missing = |key: &str| parse_error("link", input, format!("`{key}=` is missing"));
    Ok(Link {
        latency_s: latency.ok_or_else(|| missing("latency"))?,
        bandwidth_bytes_per_s: bandwidth.ok_or_else(|| missing("bw"))?,
    })
}

/// `17.2 GiB`, `512 MiB`, `3 KiB`.
pub fn format_bytes(bytes: u64) -> String {
    let value = bytes as f64;
    const UNITS: [(&str, f64); 4] = [
        ("TiB", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("GiB", 1024.0 * 1024.0 * 1024.0),
        ("MiB", 1024.0 * 1024.0),
        ("KiB", 1024.0),
    ];
    for (unit, size) in UNITS {
        if value >= size {
            return format!("{:.1} {unit}", value / size);
        }
    }
    format!("{bytes} B")
}

/// `3350 GB/s`, `1.25 GB/s`, `400 MB/s`.
pub fn format_bandwidth(bytes_per_s: f64) -> String {
    if bytes_per_s >= 100e9 {
        format!("{:.0} GB/s", bytes_per_s / 1e9)
    } else if bytes_per_s >= 1e9 {
        format!("{:.2} GB/s", bytes_per_s / 1e9)
    } else {
        format!("{:.0} MB/s", bytes_per_s / 1e6)
    }
}

/// `41.3 ms`, `120 us`, `2.10 s`, `35 ns`.
pub fn format_seconds(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.2} s")
    } else if seconds >= 1e-3 {
        format!("{:.1} ms", seconds * 1e3)
    } else if seconds >= 1e-6 {
        format!("{:.0} us", seconds * 1e6)
    } else {
        format!("{:.0} ns", seconds * 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_decimal_and_binary_prefixes() {
        assert_eq!(parse_bytes("64GiB").unwrap(), 64 << 30);
        assert_eq!(parse_bytes("64 GB").unwrap(), 64_000_000_000);
        assert_eq!(parse_bytes("1.5kib").unwrap(), 1536);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("64 GX")
            .unwrap_err()
            .to_string()
            .contains("unknown unit `GX`"));
        assert!(parse_bytes("-1GB").is_err());
        assert!(parse_bytes("GB").is_err());
        assert!(parse_bytes("1e30TB").is_err());
    }

    #[test]
    fn bandwidths_accept_bytes_and_bits() {
        assert_eq!(parse_bandwidth("400GB/s").unwrap(), 400e9);
        assert_eq!(parse_bandwidth("10Gbit/s").unwrap(), 1.25e9);
        assert_eq!(parse_bandwidth("25Gbps").unwrap(), 25e9 / 8.0);
        assert_eq!(parse_bandwidth("1e3MB/s").unwrap(), 1e9);
        assert!(parse_bandwidth("400GB").is_err());
        assert!(parse_bandwidth("10Gb/s")
            .unwrap_err()
            .to_string()
            .contains("ambiguous"));
        assert!(parse_bandwidth("0GB/s")
            .unwrap_err()
            .to_string()
            .contains("positive"));
    }

    #[test]
    fn durations_accept_common_units() {
        assert!((parse_seconds("0.2ms").unwrap() - 2e-4).abs() < 1e-15);
        assert!((parse_seconds("150us").unwrap() - 1.5e-4).abs() < 1e-15);
        assert_eq!(parse_seconds("1s").unwrap(), 1.0);
        assert!(parse_seconds("3 fortnights").is_err());
    }

    #[test]
    fn node_specs_need_memory_bandwidth_and_compute() {
        let nodes = parse_node_specs(
            "mac:mem=64GiB,bw=400GB/s,tflops=13.6,power=145W; box:mem=24GiB,bw=1TB/s,tflops=165",
        )
        .unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].name, "mac");
        assert_eq!(nodes[0].memory_bytes, 64 << 30);
        assert_eq!(nodes[0].bandwidth_bytes_per_s, 400e9);
        assert!((nodes[0].flops_per_s - 13.6e12).abs() < 1.0);
        assert_eq!(nodes[0].power_watts, Some(145.0));
        assert_eq!(nodes[1].power_watts, None);
        let err = parse_node_spec("x:mem=1GB,bw=1GB/s")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`tflops=` is missing"), "{err}");
        let err = parse_node_spec("x:mem=1GB,mem=2GB,bw=1GB/s,tflops=1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("given twice"), "{err}");
        assert!(parse_node_spec("mem=1GB").is_err());
        assert!(parse_node_spec(":mem=1GB,bw=1GB/s,tflops=1").is_err());
        assert!(parse_node_spec("x:mem=1GB,bw=1GB/s,tflops=1,color=red")
            .unwrap_err()
            .to_string()
            .contains("color"));
        assert!(parse_node_specs(" ; ").is_err());
    }

    #[test]
    fn links_need_latency_and_bandwidth() {
        let link = parse_link("latency=0.2ms,bw=10Gbit/s").unwrap();
        assert!((link.latency_s - 2e-4).abs() < 1e-15);
        assert_eq!(link.bandwidth_bytes_per_s, 1.25e9);
        assert!(parse_link("latency=1ms")
            .unwrap_err()
            .to_string()
            .contains("`bw=` is missing"));
        assert!(parse_link("bw=1GB/s,jitter=1ms").is_err());
    }

    #[test]
    fn formatting_picks_readable_units() {
        assert_eq!(format_bytes(64 << 30), "64.0 GiB");
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bandwidth(3.35e12), "3350 GB/s");
        assert_eq!(format_bandwidth(1.25e9), "1.25 GB/s");
        assert_eq!(format_seconds(0.0413), "41.3 ms");
        assert_eq!(format_seconds(2e-4), "200 us");
    }
}
