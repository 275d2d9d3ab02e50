//! This machine's network interfaces and their flags, for `cluster doctor` ("is there an
//! interface mDNS can use?").
//!
//! Owns: reading interfaces portably (`getifaddrs` through `nix`: Linux and macOS) and deciding
//! which can carry multicast. Does not own: choosing an interface (mDNS options do).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::error::{ClusterError, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterfaceInfo {
    pub name: String,
    pub ipv4: Vec<Ipv4Addr>,
    pub up: bool,
    pub running: bool,
    pub multicast: bool,
    pub loopback: bool,
}

impl InterfaceInfo {
    /// Up, running, multicast-capable, not loopback, with an IPv4 address: mDNS can use it.
    pub fn can_multicast(&self) -> bool {
        self.up && self.running && self.multicast && !self.loopback && !self.ipv4.is_empty()
    }

    /// Why mDNS cannot use it, or `None` when it can.
    pub fn multicast_problem(&self) -> Option<&'static str> {
        if self.loopback {
            Some("loopback")
        } else if !self.up {
            Some("down")
        } else if !self.running {
            Some("no carrier")
        } else if !self.multicast {
            Some("multicast off")
        } else if self.ipv4.is_empty() {
            Some("no IPv4 address")
        } else {
            None
        }
    }
}

/// Whether the interface named `name` is up, not loopback, and flagged for multicast. Linux
/// still transmits multicast on an interface whose `MULTICAST` flag is off (the flag is
/// advisory), so mDNS asks this before using an interface, as Avahi does.
pub fn carries_multicast(name: &str) -> bool {
    list_interfaces().is_ok_and(|interfaces| {
        interfaces.iter().any(|interface| {
            interface.name == name && interface.up && interface.multicast && !interface.loopback
        })
    })
}

pub fn list_interfaces() -> Result<Vec<InterfaceInfo>> {
    use nix::net::if_::InterfaceFlags;

    let addresses = nix::ifaddrs::getifaddrs().map_err(|errno| {
        ClusterError::io("listing network interfaces", std::io::Error::from(errno))
    })?;
    let mut by_name: BTreeMap<String, InterfaceInfo> = BTreeMap::new();
    for address in addresses {
        let flags = address.flags;
        let entry = by_name
            .entry(address.interface_name.clone())
            .or_insert_with(|| InterfaceInfo {
                name: address.interface_name.clone(),
                ipv4: Vec::new(),
                up: flags.contains(InterfaceFlags::IFF_UP),
                running: flags.contains(InterfaceFlags::IFF_RUNNING),
                multicast: flags.contains(InterfaceFlags::IFF_MULTICAST),
                loopback: flags.contains(InterfaceFlags::IFF_LOOPBACK),
            });
        if let Some(ipv4) = address
            .address
            .as_ref()
            .and_then(|storage| storage.as_sockaddr_in())
        {
            entry.ipv4.push(ipv4.ip());
        }
    }
    Ok(by_name.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed_and_never_counts_for_multicast() {
        let interfaces = list_interfaces().unwrap();
        let loopback = interfaces.iter().find(|interface| interface.loopback);
        if let Some(loopback) = loopback {
            assert!(!loopback.can_multicast());
            assert_eq!(loopback.multicast_problem(), Some("loopback"));
        }
    }

    #[test]
    fn multicast_problem_names_the_missing_flag() {
        let mut interface = InterfaceInfo {
            name: "veth0".into(),
            ipv4: vec![Ipv4Addr::new(10, 0, 0, 1)],
            up: true,
            running: true,
            multicast: false,
            loopback: false,
        };
        assert_eq!(interface.multicast_problem(), Some("multicast off"));
        interface.multicast = true;
        assert!(interface.can_multicast());
        interface.up = false;
        assert_eq!(interface.multicast_problem(), Some("down"));
    }
}
