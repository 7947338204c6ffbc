//! The AMI each tier launches from: the one its spec names
//! (`spec.instances.<tier>.ami`, else `spec.instances.ami`), else the
//! stack's resolved image (`status.resolvedAmi`): the newest Ubuntu 24.04
//! LTS image from Canonical when the stack first needed one, looked up once
//! and kept. Also the refusal, before anything is launched, of images the
//! hosts cannot run on.

use std::collections::BTreeMap;

use tracing::info;

use crate::api::{ResolvedAmi, Tier, VotingStackSpec, VotingStackStatus};
use crate::cloud::{CloudError, StackIdentity};
use crate::model::{InfraAction, ObservedInfra};

use super::reconcile::Engine;

/// The AMI a tier launches from; None when the spec names none and the
/// stack's image was not looked up yet.
pub fn tier_ami(spec: &VotingStackSpec, status: &VotingStackStatus, tier: Tier) -> Option<String> {
    spec.instances.ami_for(tier).map(str::to_owned).or_else(|| status.resolved_ami.as_ref().map(|r| r.image_id.clone()))
}

/// Where a tier's AMI comes from, as a message names it.
pub fn ami_field(spec: &VotingStackSpec, tier: Tier) -> String {
    if spec.instances.override_for(tier).is_some_and(|o| o.ami.is_some()) {
        format!("spec.instances.{tier}.ami")
    } else if spec.instances.ami.is_some() {
        "spec.instances.ami".to_owned()
    } else {
        "status.resolvedAmi".to_owned()
    }
}

/// The tiers whose spec names no AMI.
fn unnamed(spec: &VotingStackSpec) -> impl Iterator<Item = Tier> + '_ {
    Tier::ALL.into_iter().filter(|t| spec.instances.ami_for(*t).is_none())
}

/// The image the live instances of the tiers without an AMI in the spec
/// already run, when they agree on one: a stack whose status was lost (or
/// whose spec just dropped its `ami`) keeps the image it runs instead of
/// moving to a newer one.
pub fn running_unnamed(spec: &VotingStackSpec, infra: &ObservedInfra) -> Option<String> {
    let mut images = unnamed(spec).flat_map(|t| infra.live(t)).map(|i| i.ami.clone());
    let first = images.next()?;
    images.all(|i| i == first).then_some(first)
}

/// The distinct (AMI, instance type) pairs the plan launches, each with
/// the field the AMI comes from (the first tier's, in plan order).
pub fn launched_images(spec: &VotingStackSpec, actions: &[InfraAction]) -> BTreeMap<(String, String), String> {
    let mut launched = BTreeMap::new();
    for action in actions {
        if let InfraAction::LaunchInstance(launch) = action {
            if let Some(ami) = &launch.ami {
                launched
                    .entry((ami.clone(), launch.instance_type.clone()))
                    .or_insert_with(|| ami_field(spec, launch.tier));
            }
        }
    }
    launched
}

impl Engine {
    /// Keeps `status.resolvedAmi` for the tiers whose spec names no AMI:
    /// what is recorded stays; else the image those tiers' instances run;
    /// else the newest Ubuntu 24.04 LTS image from Canonical (one
    /// DescribeImages). Cleared once every tier names its AMI.
    pub(super) async fn resolve_ami(
        &self,
        ident: &StackIdentity,
        spec: &VotingStackSpec,
        status: &mut VotingStackStatus,
        infra: &ObservedInfra,
    ) -> Result<(), CloudError> {
        if unnamed(spec).next().is_none() {
            status.resolved_ami = None;
            return Ok(());
        }
        if status.resolved_ami.is_some() {
            return Ok(());
        }
        let resolved = match running_unnamed(spec, infra) {
            Some(image_id) => {
                info!(stack = %ident.tag_value(), ami = %image_id, "the stack's instances run this image: it stays the stack's");
                ResolvedAmi { image_id, name: String::new() }
            }
            None => {
                let newest = self.cloud.latest_ubuntu().await?;
                info!(stack = %ident.tag_value(), ami = %newest.image_id, name = %newest.name,
                    "spec.instances.ami is unset: the stack runs the newest Ubuntu 24.04 LTS image");
                newest
            }
        };
        status.resolved_ami = Some(resolved);
        Ok(())
    }

    /// Refuses the plan's launches, before any step of it is carried out,
    /// when one of their images is Windows, Amazon Linux, RHEL or SUSE, or
    /// not of its instance type's architecture.
    pub(super) async fn refuse_unusable_images(
        &self,
        spec: &VotingStackSpec,
        actions: &[InfraAction],
    ) -> Result<(), CloudError> {
        for ((ami, instance_type), field) in launched_images(spec, actions) {
            self.cloud.check_image(&ami, &field, &instance_type).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::InstanceOverride;
    use crate::engine::plan::instance_launch;
    use crate::model::{InstanceState, ObservedInstance};

    fn spec(ami: Option<&str>) -> VotingStackSpec {
        let mut s = crate::fixtures::spec();
        s.instances.ami = ami.map(str::to_owned);
        s
    }

    fn resolved(id: &str) -> VotingStackStatus {
        VotingStackStatus {
            resolved_ami: Some(ResolvedAmi { image_id: id.into(), name: String::new() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_tier_runs_its_own_ami_then_the_stacks_then_the_resolved_one() {
        let mut s = spec(None);
        s.instances.database = Some(InstanceOverride { ami: Some("ami-0000000d".into()), instance_type: None });
        let status = resolved("ami-0000000r");
        assert_eq!(tier_ami(&s, &status, Tier::Frontend).as_deref(), Some("ami-0000000r"));
        assert_eq!(tier_ami(&s, &status, Tier::Database).as_deref(), Some("ami-0000000d"));
        assert_eq!(tier_ami(&s, &VotingStackStatus::default(), Tier::Backend), None);
        assert_eq!(ami_field(&s, Tier::Database), "spec.instances.database.ami");
        assert_eq!(ami_field(&s, Tier::Frontend), "status.resolvedAmi");
        s.instances.ami = Some("ami-0000000s".into());
        assert_eq!(tier_ami(&s, &status, Tier::Frontend).as_deref(), Some("ami-0000000s"));
        assert_eq!(ami_field(&s, Tier::Frontend), "spec.instances.ami");
    }

    fn instance(id: &str, tier: Tier, ami: &str) -> ObservedInstance {
        ObservedInstance { ami: ami.into(), ..crate::fixtures::instance(tier, id, InstanceState::Running) }
    }

    #[test]
    fn the_image_running_instances_agree_on_stays_the_stacks() {
        let s = spec(None);
        let mut infra = ObservedInfra {
            instances: vec![
                instance("i-1", Tier::Frontend, "ami-0000000a"),
                instance("i-2", Tier::Backend, "ami-0000000a"),
            ],
            ..Default::default()
        };
        assert_eq!(running_unnamed(&s, &infra).as_deref(), Some("ami-0000000a"));
        infra.instances.push(instance("i-3", Tier::Database, "ami-0000000b"));
        assert_eq!(running_unnamed(&s, &infra), None, "instances that disagree decide nothing");
        assert_eq!(running_unnamed(&s, &ObservedInfra::default()), None);
    }

    #[test]
    fn each_launched_image_is_checked_once_under_the_field_it_comes_from() {
        let mut s = spec(Some("ami-0000000s"));
        s.instances.backend = Some(InstanceOverride { ami: Some("ami-0000000b".into()), instance_type: None });
        let status = VotingStackStatus::default();
        let actions: Vec<InfraAction> =
            Tier::ALL.iter().map(|t| InfraAction::LaunchInstance(instance_launch(&s, &status, *t, 0))).collect();
        let launched = launched_images(&s, &actions);
        let key = |ami: &str| (ami.to_owned(), "t3.small".to_owned());
        assert_eq!(launched.len(), 2);
        assert_eq!(launched[&key("ami-0000000s")], "spec.instances.ami");
        assert_eq!(launched[&key("ami-0000000b")], "spec.instances.backend.ami");
    }
}
