//! The availability zone of a new stack, chosen from what EC2 lists (the
//! region's zones and the zones offering each instance type). Nothing here
//! calls EC2.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

/// `zone-type` of a region's ordinary availability zones (not a Local or
/// Wavelength Zone).
pub(super) const AVAILABILITY_ZONE: &str = "availability-zone";
/// `state` of a zone that takes new resources.
pub(super) const AVAILABLE: &str = "available";

/// A zone as DescribeAvailabilityZones lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RegionZone {
    pub name: String,
    /// `availability-zone`, `local-zone` or `wavelength-zone`. None when
    /// the endpoint leaves it out: the request's `zone-type` filter stands
    /// for it then.
    pub zone_type: Option<String>,
    /// None when the endpoint leaves it out: the `state` filter stands for it.
    pub state: Option<String>,
}

/// The zone a new stack's subnets go to: among the region's available
/// zones of type `availability-zone` that offer every one of `types`
/// (`offered`: zone → instance types offered there), sorted by name, the
/// one a stable hash of `owner` (the stack's `namespace/name`) picks.
///
/// Stacks spread over the zones, and so over the per-zone quota of NAT
/// gateways; the same stack gets the same zone again while the region's
/// zones and offerings stay as they are. None when no zone offers every type.
pub(super) fn choose_zone(
    zones: &[RegionZone],
    offered: &BTreeMap<String, BTreeSet<String>>,
    types: &[String],
    owner: &str,
) -> Option<String> {
    let candidates: Vec<&str> = zones
        .iter()
        .filter(|z| z.zone_type.as_deref().is_none_or(|t| t == AVAILABILITY_ZONE))
        .filter(|z| z.state.as_deref().is_none_or(|s| s == AVAILABLE))
        .filter(|z| offered.get(&z.name).is_some_and(|have| types.iter().all(|t| have.contains(t))))
        .map(|z| z.name.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let digest = Sha256::digest(owner.as_bytes());
    let head: [u8; 8] = digest[..8].try_into().ok()?;
    let len = u64::try_from(candidates.len()).ok()?;
    let index = usize::try_from(u64::from_be_bytes(head) % len).ok()?;
    candidates.get(index).map(|z| (*z).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str, zone_type: &str) -> RegionZone {
        RegionZone { name: name.into(), zone_type: Some(zone_type.into()), state: Some(AVAILABLE.into()) }
    }

    /// Six zones of us-east-1 (the first five named), each offering `types`.
    fn region(types: &[&str]) -> (Vec<RegionZone>, BTreeMap<String, BTreeSet<String>>) {
        let names = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1e", "us-east-1f"];
        let zones = names.iter().map(|n| zone(n, AVAILABILITY_ZONE)).collect();
        let offered = names.iter().map(|n| (n.to_string(), types.iter().map(|t| t.to_string()).collect())).collect();
        (zones, offered)
    }

    fn types(list: &[&str]) -> Vec<String> {
        list.iter().map(|t| t.to_string()).collect()
    }

    fn owners(n: usize) -> impl Iterator<Item = String> {
        (0..n).map(|i| format!("team-{}/vote-{i}", i % 7))
    }

    #[test]
    fn stacks_spread_over_every_zone() {
        let (zones, offered) = region(&["t3.small"]);
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for owner in owners(600) {
            let z = choose_zone(&zones, &offered, &types(&["t3.small"]), &owner).expect("a zone");
            *count.entry(z).or_default() += 1;
        }
        assert_eq!(count.len(), 6, "every zone gets stacks: {count:?}");
        // 100 each on average; a fair hash keeps every zone well within 50..150.
        assert!(count.values().all(|n| (50..150).contains(n)), "{count:?}");
    }

    #[test]
    fn the_choice_is_deterministic_and_ignores_the_order_ec2_lists_in() {
        let (mut zones, offered) = region(&["t3.small"]);
        let t = types(&["t3.small"]);
        let first: Vec<_> = owners(50).map(|o| choose_zone(&zones, &offered, &t, &o)).collect();
        zones.reverse();
        let again: Vec<_> = owners(50).map(|o| choose_zone(&zones, &offered, &t, &o)).collect();
        assert_eq!(first, again);
        let distinct: BTreeSet<_> = first.iter().flatten().collect();
        assert!(distinct.len() > 1, "not always the same zone: {distinct:?}");
        // A fixed value, so a change of hash (which would move new stacks
        // of a given name to another zone than before) shows here.
        assert_eq!(choose_zone(&zones, &offered, &t, "default/demo").as_deref(), Some("us-east-1c"));
    }

    #[test]
    fn local_and_wavelength_zones_are_never_chosen() {
        let t = types(&["t3.medium"]);
        let local = ["us-west-2-lax-1a", "us-west-2-lax-1b", "us-west-2-wl1-sea-wlz-1"];
        let mut zones = vec![zone("us-west-2a", AVAILABILITY_ZONE)];
        zones.push(zone(local[0], "local-zone"));
        zones.push(zone(local[2], "wavelength-zone"));
        // Offered in all; the Local Zone lax-1b is not listed by
        // DescribeAvailabilityZones (filtered out by zone-type) at all.
        let offered: BTreeMap<String, BTreeSet<String>> = ["us-west-2a", local[0], local[1], local[2]]
            .iter()
            .map(|z| (z.to_string(), BTreeSet::from(["t3.medium".to_string()])))
            .collect();
        for owner in owners(100) {
            assert_eq!(choose_zone(&zones, &offered, &t, &owner).as_deref(), Some("us-west-2a"));
        }
    }

    #[test]
    fn zones_lacking_an_instance_type_of_the_stack_are_left_out() {
        let (zones, mut offered) = region(&["t3.small", "r6i.large"]);
        // us-east-1e offers no t3 (as in us-east-1), 1b lacks the database's type.
        offered.insert("us-east-1e".into(), BTreeSet::from(["r6i.large".into()]));
        offered.insert("us-east-1b".into(), BTreeSet::from(["t3.small".into()]));
        offered.remove("us-east-1d");
        let t = types(&["r6i.large", "t3.small"]);
        let chosen: BTreeSet<String> = owners(300).filter_map(|o| choose_zone(&zones, &offered, &t, &o)).collect();
        let expected: BTreeSet<String> = ["us-east-1a", "us-east-1c", "us-east-1f"].map(String::from).into();
        assert_eq!(chosen, expected);
    }

    #[test]
    fn no_zone_offering_every_type_is_none() {
        let (zones, offered) = region(&["t3.small"]);
        assert_eq!(choose_zone(&zones, &offered, &types(&["t3.small", "p5.48xlarge"]), "default/demo"), None);
        assert_eq!(choose_zone(&[], &offered, &types(&["t3.small"]), "default/demo"), None);
    }

    #[test]
    fn a_zone_not_available_is_left_out_and_missing_fields_trust_the_filters() {
        let (mut zones, offered) = region(&["t3.small"]);
        for z in &mut zones {
            z.state = Some("impaired".into());
        }
        zones[2].state = None;
        zones[2].zone_type = None;
        for owner in owners(50) {
            let z = choose_zone(&zones, &offered, &types(&["t3.small"]), &owner);
            assert_eq!(z.as_deref(), Some("us-east-1c"));
        }
    }
}
