//! A small table of common machines and accelerators, so `hearth plan --hardware m3-ultra-512gb`
//! can answer before anyone owns the hardware.
//!
//! Owns: [`HardwareSpec`], the table ([`HARDWARE`]), name lookup, `--hardware` lists
//! (`a,b,2xc`) and how GPUs of one machine are joined ([`HardwareSpec::gpu_interconnect`]): in a
//! list, `Nx<NVIDIA part>` with N ≥ 2 is one machine with N GPUs ([`parse_hardware_cluster`]),
//! separate entries are separate machines. Does not own measured numbers (the CLI measures
//! "this machine").
//!
//! Interconnects: NVLink 4 on H100 SXM and H200 (900 GB/s bidirectional, 450 GB/s each way),
//! NVLink 3 on A100 SXM (300 GB/s each way), PCIe 5.0 x16 with peer-to-peer on H100 PCIe,
//! PCIe 4.0 x16 with peer-to-peer on L4 and L40S; GeForce cards have peer-to-peer disabled, so
//! their collectives go through host memory (NVLink bridges on RTX 3090 are not assumed).
//!
//! Sources, by kind:
//! - NVIDIA: the product datasheets (A100, H100, H200, L4, L40S) and the Ampere GA102, Ada
//!   AD102 and Blackwell GB202 whitepapers (RTX 3090, 4090, 5090). Memory is the datasheet
//!   capacity (GiB), bandwidth the datasheet figure, compute the dense BF16 tensor rate with
//!   FP32 accumulation (datasheets print twice that "with sparsity"), power the board/TDP limit.
//! - Apple: memory bandwidth from Apple's product pages and press releases. Apple publishes no
//!   TFLOPS; the figures are the commonly cited GPU FP32 = FP16 rates (ALUs × 2 × clock) for
//!   the largest GPU of each chip's configuration. Power: the wall "max" of Apple's Mac Studio
//!   and Mac mini power-consumption pages where Apple measured that chip (M1/M2 Max and Ultra,
//!   M1/M2 Mac mini); otherwise the power adapter or power supply rating, an upper bound.
//!   The model may use only part of unified memory: macOS's default GPU working-set limit is
//!   about 2/3 of memory up to 36 GiB and 3/4 above (raisable with `sysctl iogpu.wired_limit_mb`).
//!
//! Invariant: names are unique, lower-case, and contain no `,` (the list separator).

use serde::Serialize;

use crate::cluster::{Cluster, Host, Link, NodeId, NodeSpec};
use crate::error::{PlanError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HardwareSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// Total GPU memory (NVIDIA) or unified memory (Apple), GiB.
    pub memory_gib: f64,
    /// Of `memory_gib`, the part a model may use by default.
    pub usable_fraction: f64,
    pub bandwidth_gb_per_s: f64,
    /// Dense BF16 (NVIDIA tensor cores) or FP16 (Apple GPU) TFLOP/s.
    pub tflops: f64,
    pub power_watts: f64,
}

impl HardwareSpec {
    /// This hardware as a planner node named `name`.
    pub fn node(&self, name: String) -> NodeSpec {
        NodeSpec {
            name,
            memory_bytes: (self.memory_gib * self.usable_fraction * GIB).floor() as u64,
            bandwidth_bytes_per_s: self.bandwidth_gb_per_s * 1e9,
            flops_per_s: self.tflops * 1e12,
            power_watts: Some(self.power_watts),
        }
    }
}

impl HardwareSpec {
    /// How several of this part in one machine are joined, or `None` for a part that is a whole
    /// machine (Apple Silicon).
    pub fn gpu_interconnect(&self) -> Option<Link> {
        match self.name {
            "h100-sxm" | "h200" => Some(Link::NVLINK_4),
            "a100-40gb" | "a100-80gb" => Some(Link::NVLINK_3),
            "h100-pcie" => Some(Link::PCIE_5_X16),
            "l4" | "l40s" => Some(Link::PCIE_4_X16),
            "rtx-3090" | "rtx-4090" | "rtx-5090" => Some(Link::PCIE_THROUGH_HOST_MEMORY),
            _ => None,
        }
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

const fn nvidia(
    name: &'static str,
    description: &'static str,
    memory_gib: f64,
    bandwidth_gb_per_s: f64,
    tflops: f64,
    power_watts: f64,
) -> HardwareSpec {
    HardwareSpec {
        name,
        description,
        memory_gib,
        usable_fraction: 1.0,
        bandwidth_gb_per_s,
        tflops,
        power_watts,
    }
}

const fn apple(
    name: &'static str,
    description: &'static str,
    memory_gib: f64,
    bandwidth_gb_per_s: f64,
    tflops: f64,
    power_watts: f64,
) -> HardwareSpec {
    let usable_fraction = if memory_gib <= 36.0 { 2.0 / 3.0 } else { 0.75 };
    HardwareSpec {
        name,
        description,
        memory_gib,
        usable_fraction,
        bandwidth_gb_per_s,
        tflops,
        power_watts,
    }
}

pub const HARDWARE: &[HardwareSpec] = &[
    // NVIDIA data-centre parts (datasheets).
    nvidia(
        "h100-sxm",
        "NVIDIA H100 SXM5 80 GB HBM3",
        80.0,
        3350.0,
        989.0,
        700.0,
    ),
    nvidia(
        "h100-pcie",
        "NVIDIA H100 PCIe 80 GB HBM2e",
        80.0,
        2000.0,
        756.0,
        350.0,
    ),
    nvidia(
        "h200",
        "NVIDIA H200 SXM 141 GB HBM3e",
        141.0,
        4800.0,
        989.0,
        700.0,
    ),
    nvidia(
        "a100-40gb",
        "NVIDIA A100 SXM4 40 GB HBM2",
        40.0,
        1555.0,
        312.0,
        400.0,
    ),
    nvidia(
        "a100-80gb",
        "NVIDIA A100 SXM4 80 GB HBM2e",
        80.0,
        2039.0,
        312.0,
        400.0,
    ),
    nvidia("l4", "NVIDIA L4 24 GB GDDR6", 24.0, 300.0, 121.0, 72.0),
    nvidia("l40s", "NVIDIA L40S 48 GB GDDR6", 48.0, 864.0, 362.0, 350.0),
    // NVIDIA GeForce (architecture whitepapers; BF16 with FP32 accumulate is half the FP16-accumulate rate).
    nvidia(
        "rtx-3090",
        "NVIDIA GeForce RTX 3090 24 GB GDDR6X",
        24.0,
        936.0,
        71.0,
        350.0,
    ),
    nvidia(
        "rtx-4090",
        "NVIDIA GeForce RTX 4090 24 GB GDDR6X",
        24.0,
        1008.0,
        165.2,
        450.0,
    ),
    nvidia(
        "rtx-5090",
        "NVIDIA GeForce RTX 5090 32 GB GDDR7",
        32.0,
        1792.0,
        209.5,
        575.0,
    ),
    // Apple M1 family (Mac mini M1 39 W; MacBook Pro 96 W adapter; Mac Studio M1 Max 115 W, M1 Ultra 215 W).
    apple(
        "m1-16gb",
        "Apple M1, 8-core GPU, 16 GB",
        16.0,
        68.25,
        2.6,
        39.0,
    ),
    apple(
        "m1-pro-32gb",
        "Apple M1 Pro, 16-core GPU, 32 GB",
        32.0,
        200.0,
        5.3,
        96.0,
    ),
    apple(
        "m1-max-32gb",
        "Apple M1 Max, 32-core GPU, 32 GB",
        32.0,
        400.0,
        10.6,
        115.0,
    ),
    apple(
        "m1-max-64gb",
        "Apple M1 Max, 32-core GPU, 64 GB",
        64.0,
        400.0,
        10.6,
        115.0,
    ),
    apple(
        "m1-ultra-64gb",
        "Apple M1 Ultra, 64-core GPU, 64 GB",
        64.0,
        800.0,
        21.2,
        215.0,
    ),
    apple(
        "m1-ultra-128gb",
        "Apple M1 Ultra, 64-core GPU, 128 GB",
        128.0,
        800.0,
        21.2,
        215.0,
    ),
    // Apple M2 family (Mac mini M2 50 W, M2 Pro about 100 W; Mac Studio M2 Max 145 W, M2 Ultra 295 W).
    apple(
        "m2-16gb",
        "Apple M2, 10-core GPU, 16 GB",
        16.0,
        100.0,
        3.6,
        50.0,
    ),
    apple(
        "m2-24gb",
        "Apple M2, 10-core GPU, 24 GB",
        24.0,
        100.0,
        3.6,
        50.0,
    ),
    apple(
        "m2-pro-32gb",
        "Apple M2 Pro, 19-core GPU, 32 GB",
        32.0,
        200.0,
        6.8,
        100.0,
    ),
    apple(
        "m2-max-32gb",
        "Apple M2 Max, 38-core GPU, 32 GB",
        32.0,
        400.0,
        13.6,
        145.0,
    ),
    apple(
        "m2-max-64gb",
        "Apple M2 Max, 38-core GPU, 64 GB",
        64.0,
        400.0,
        13.6,
        145.0,
    ),
    apple(
        "m2-max-96gb",
        "Apple M2 Max, 38-core GPU, 96 GB",
        96.0,
        400.0,
        13.6,
        145.0,
    ),
    apple(
        "m2-ultra-64gb",
        "Apple M2 Ultra, 76-core GPU, 64 GB",
        64.0,
        800.0,
        27.2,
        295.0,
    ),
    apple(
        "m2-ultra-128gb",
        "Apple M2 Ultra, 76-core GPU, 128 GB",
        128.0,
        800.0,
        27.2,
        295.0,
    ),
    apple(
        "m2-ultra-192gb",
        "Apple M2 Ultra, 76-core GPU, 192 GB",
        192.0,
        800.0,
        27.2,
        295.0,
    ),
    // Apple M3 family (MacBook Pro adapters: 70 W M3, 96 W M3 Pro, 140 W M3 Max; Mac Studio 480 W supply).
    apple(
        "m3-24gb",
        "Apple M3, 10-core GPU, 24 GB",
        24.0,
        100.0,
        4.1,
        70.0,
    ),
    apple(
        "m3-pro-36gb",
        "Apple M3 Pro, 18-core GPU, 36 GB",
        36.0,
        150.0,
        7.4,
        96.0,
    ),
    apple(
        "m3-max-36gb",
        "Apple M3 Max, 30-core GPU, 36 GB",
        36.0,
        300.0,
        12.3,
        140.0,
    ),
    apple(
        "m3-max-64gb",
        "Apple M3 Max, 40-core GPU, 64 GB",
        64.0,
        400.0,
        16.4,
        140.0,
    ),
    apple(
        "m3-max-128gb",
        "Apple M3 Max, 40-core GPU, 128 GB",
        128.0,
        400.0,
        16.4,
        140.0,
    ),
    apple(
        "m3-ultra-96gb",
        "Apple M3 Ultra, 60-core GPU, 96 GB",
        96.0,
        819.0,
        21.3,
        480.0,
    ),
    apple(
        "m3-ultra-256gb",
        "Apple M3 Ultra, 80-core GPU, 256 GB",
        256.0,
        819.0,
        28.4,
        480.0,
    ),
    apple(
        "m3-ultra-512gb",
        "Apple M3 Ultra, 80-core GPU, 512 GB",
        512.0,
        819.0,
        28.4,
        480.0,
    ),
    // Apple M4 family (Mac mini M4 65 W, M4 Pro 140 W; M4 Max: MacBook Pro 140 W adapter).
    apple(
        "m4-16gb",
        "Apple M4, 10-core GPU, 16 GB",
        16.0,
        120.0,
        4.3,
        65.0,
    ),
    apple(
        "m4-32gb",
        "Apple M4, 10-core GPU, 32 GB",
        32.0,
        120.0,
        4.3,
        65.0,
    ),
    apple(
        "m4-pro-24gb",
        "Apple M4 Pro, 20-core GPU, 24 GB",
        24.0,
        273.0,
        9.2,
        140.0,
    ),
    apple(
        "m4-pro-48gb",
        "Apple M4 Pro, 20-core GPU, 48 GB",
        48.0,
        273.0,
        9.2,
        140.0,
    ),
    apple(
        "m4-pro-64gb",
        "Apple M4 Pro, 20-core GPU, 64 GB",
        64.0,
        273.0,
        9.2,
        140.0,
    ),
    apple(
        "m4-max-36gb",
        "Apple M4 Max, 32-core GPU, 36 GB",
        36.0,
        410.0,
        14.7,
        140.0,
    ),
    apple(
        "m4-max-64gb",
        "Apple M4 Max, 40-core GPU, 64 GB",
        64.0,
        546.0,
        18.4,
        140.0,
    ),
    apple(
        "m4-max-128gb",
        "Apple M4 Max, 40-core GPU, 128 GB",
        128.0,
        546.0,
        18.4,
        140.0,
    ),
];

pub fn lookup(name: &str) -> Option<&'static HardwareSpec> {
    let lower = name.trim().to_ascii_lowercase();
    HARDWARE.iter().find(|h| h.name == lower)
}

pub fn known_names() -> String {
    HARDWARE
        .iter()
        .map(|h| h.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Most machines one `--hardware` entry may repeat (`8xh100-sxm`).
pub const MAX_REPEAT: usize = 64;

/// Nodes for `a,b,2xc`: each entry a table name, optionally `Nx`-prefixed; a name that occurs
/// more than once (by repetition or by count) is numbered `name#1`, `name#2`, ….
pub fn parse_hardware_list(list: &str) -> Result<Vec<NodeSpec>> {
    let entries = parse_entries(list)?;
    Ok(name_nodes(&entries))
}

/// A cluster for `a,b,2xc`: the nodes of [`parse_hardware_list`], `default_link` between
/// machines, and one [`Host`] per `Nx` entry (N ≥ 2) of a part with a GPU interconnect
/// ([`HardwareSpec::gpu_interconnect`]), named after the entry (`2xh100-sxm`, then
/// `2xh100-sxm#2` if repeated).
pub fn parse_hardware_cluster(list: &str, default_link: Link) -> Result<Cluster> {
    let entries = parse_entries(list)?;
    let mut cluster = Cluster::new(name_nodes(&entries), default_link);
    let mut first_node = 0;
    for &(count, spec) in &entries {
        if let Some(interconnect) = spec.gpu_interconnect().filter(|_| count >= 2) {
            let entry_name = format!("{count}x{}", spec.name);
            let repeats = cluster
                .hosts
                .iter()
                .filter(|h| h.name == entry_name || h.name.starts_with(&format!("{entry_name}#")))
                .count();
            cluster.hosts.push(Host {
                name: if repeats == 0 {
                    entry_name
                } else {
                    format!("{entry_name}#{}", repeats + 1)
                },
                nodes: (first_node..first_node + count).map(NodeId).collect(),
                interconnect,
            });
        }
        first_node += count;
    }
    Ok(cluster)
}

/// `(count, part)` per entry of a `--hardware` list.
fn parse_entries(list: &str) -> Result<Vec<(usize, &'static HardwareSpec)>> {
    let mut entries = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (count, name) = match entry.split_once(['x', 'X']) {
            Some((count, name))
                if !count.is_empty() && count.chars().all(|c| c.is_ascii_digit()) =>
            {
                let count: usize = count.parse().map_err(|_| PlanError::Parse {
                    what: "hardware count",
                    input: entry.to_string(),
                    reason: "not a number".into(),
                })?;
                (count, name)
            }
            _ => (1, entry),
        };
        if count == 0 || count > MAX_REPEAT {
            return Err(PlanError::Parse {
                what: "hardware count",
                input: entry.to_string(),
                reason: format!("must be 1..={MAX_REPEAT}"),
            });
        }
        let spec = lookup(name).ok_or_else(|| PlanError::UnknownHardware {
            name: name.to_string(),
            known: known_names(),
        })?;
        entries.push((count, spec));
    }
    if entries.is_empty() {
        return Err(PlanError::Parse {
            what: "hardware list",
            input: list.to_string(),
            reason: "no hardware named".into(),
        });
    }
    Ok(entries)
}

/// One node per machine of `entries`, numbered where a part occurs more than once.
fn name_nodes(entries: &[(usize, &'static HardwareSpec)]) -> Vec<NodeSpec> {
    let parts: Vec<&'static HardwareSpec> = entries
        .iter()
        .flat_map(|&(count, spec)| std::iter::repeat_n(spec, count))
        .collect();
    let mut seen: Vec<(&str, usize)> = Vec::new();
    parts
        .iter()
        .map(|spec| {
            let total = parts.iter().filter(|s| s.name == spec.name).count();
            let name = if total == 1 {
                spec.name.to_string()
            } else {
                let index = match seen.iter_mut().find(|(n, _)| *n == spec.name) {
                    Some((_, i)) => {
                        *i += 1;
                        *i
                    }
                    None => {
                        seen.push((spec.name, 1));
                        1
                    }
                };
                format!("{}#{index}", spec.name)
            };
            spec.node(name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_unique_and_numbers_sane() {
        for (idx, spec) in HARDWARE.iter().enumerate() {
            assert!(
                !HARDWARE[..idx].iter().any(|s| s.name == spec.name),
                "{} twice",
                spec.name
            );
            assert_eq!(spec.name, spec.name.to_ascii_lowercase());
            assert!(!spec.name.contains(','));
            assert!(
                spec.memory_gib > 0.0
                    && spec.bandwidth_gb_per_s > 0.0
                    && spec.tflops > 0.0
                    && spec.power_watts > 0.0
            );
        }
        // The parts the planner's examples use, with their spec-sheet numbers.
        let h100 = lookup("H100-SXM").unwrap();
        assert_eq!(
            (h100.memory_gib, h100.bandwidth_gb_per_s, h100.tflops),
            (80.0, 3350.0, 989.0)
        );
        let mac = lookup("m3-ultra-512gb").unwrap();
        assert_eq!(mac.bandwidth_gb_per_s, 819.0);
        assert_eq!(
            mac.node("m".into()).memory_bytes,
            384 << 30,
            "3/4 of 512 GiB is the default GPU limit"
        );
    }

    #[test]
    fn lists_repeat_and_number_duplicates() {
        let nodes = parse_hardware_list("2xh100-sxm, rtx-4090,h100-sxm").unwrap();
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            ["h100-sxm#1", "h100-sxm#2", "rtx-4090", "h100-sxm#3"]
        );
        assert_eq!(nodes[2].memory_bytes, 24 << 30);
        assert_eq!(nodes[2].bandwidth_bytes_per_s, 1008e9);
    }

    #[test]
    fn repeated_gpus_are_one_host_and_macs_are_machines() {
        let cluster = parse_hardware_cluster(
            "2xh100-sxm,m3-ultra-512gb,2xm3-ultra-512gb,2xh100-sxm,2xrtx-4090",
            Link::TEN_GIGABIT_ETHERNET,
        )
        .unwrap();
        cluster.validate().unwrap();
        let hosts: Vec<(&str, Vec<usize>)> = cluster
            .hosts
            .iter()
            .map(|h| (h.name.as_str(), h.nodes.iter().map(|n| n.0).collect()))
            .collect();
        assert_eq!(
            hosts,
            [
                ("2xh100-sxm", vec![0, 1]),
                ("2xh100-sxm#2", vec![5, 6]),
                ("2xrtx-4090", vec![7, 8])
            ]
        );
        assert_eq!(cluster.link(NodeId(0), NodeId(1)), Link::NVLINK_4);
        assert_eq!(
            cluster.link(NodeId(1), NodeId(5)),
            Link::TEN_GIGABIT_ETHERNET
        );
        assert_eq!(
            cluster.link(NodeId(3), NodeId(4)),
            Link::TEN_GIGABIT_ETHERNET
        );
        assert!(cluster.hosts[0].allows_tensor_parallel());
        assert!(
            !cluster.hosts[2].allows_tensor_parallel(),
            "GeForce collectives go through host memory"
        );
        for spec in HARDWARE {
            let is_apple = spec.name.starts_with('m') && spec.name.as_bytes()[1].is_ascii_digit();
            assert_eq!(spec.gpu_interconnect().is_none(), is_apple, "{}", spec.name);
        }
    }

    #[test]
    fn bad_lists_are_clear_errors() {
        let err = parse_hardware_list("h100-sxm,tpu-v9")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown hardware `tpu-v9`") && err.contains("rtx-4090"),
            "{err}"
        );
        assert!(parse_hardware_list("0xh100-sxm")
            .unwrap_err()
            .to_string()
            .contains("1..=64"));
        assert!(parse_hardware_list("999xh100-sxm").is_err());
        assert!(parse_hardware_list(" , ").is_err());
    }
}
