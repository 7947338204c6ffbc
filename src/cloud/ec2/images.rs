//! AMIs: the newest Ubuntu image an unset `spec.instances.ami` stands for,
//! what an AMI is (its root device, its operating system family), and the
//! refusal of images the hosts cannot be provisioned on. One DescribeImages
//! per AMI, remembered for the life of the process.

use aws_sdk_ec2::types::{Image, PlatformValues};
use tracing::info;

use crate::api::validate::is_arm64_type;
use crate::api::ResolvedAmi;
use crate::cloud::{CloudError, CANONICAL_OWNER_ID, UBUNTU_NOBLE_AMD64_NAME};

use super::{filter, Ec2Cloud};

/// What the launches need to know about an AMI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ImageFacts {
    pub name: String,
    /// `x86_64`, `arm64`, ... as EC2 names it.
    pub architecture: String,
    /// Its root device, when the image names one in its mappings.
    pub root: Option<RootDevice>,
    /// The family of an operating system the hosts cannot run on.
    pub unsupported: Option<&'static str>,
}

/// An AMI's root device: its name and the size of its snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RootDevice {
    pub name: String,
    pub size_gib: Option<i32>,
}

/// The operating system family of an image the hosts cannot be provisioned
/// on (no apt-get, no Debian `docker.io`), read from what DescribeImages
/// says: `platform` (set for Windows only), `platformDetails` (EC2's billing
/// product: Windows, Red Hat Enterprise Linux, SUSE Linux), and the names
/// and descriptions Amazon, Red Hat and SUSE give their images. None for
/// Debian, Ubuntu and images nothing is known about (the host's
/// `/etc/os-release` decides those, see `bootstrap.sh`).
pub(crate) fn unsupported_family(
    platform: Option<&str>,
    platform_details: Option<&str>,
    name: &str,
    description: &str,
) -> Option<&'static str> {
    let details = platform_details.unwrap_or("").to_ascii_lowercase();
    let name = name.to_ascii_lowercase();
    let description = description.to_ascii_lowercase();
    if platform.is_some_and(|p| p.eq_ignore_ascii_case("windows"))
        || details.contains("windows")
        || name.starts_with("windows_server")
    {
        return Some("Windows");
    }
    if details.starts_with("red hat") || name.starts_with("rhel-") || description.contains("red hat enterprise linux") {
        return Some("Red Hat Enterprise Linux");
    }
    if details.starts_with("suse") || name.starts_with("suse-sles") || description.contains("suse linux enterprise") {
        return Some("SUSE Linux Enterprise");
    }
    if name.starts_with("al2023-ami")
        || name.starts_with("amzn2-ami")
        || name.starts_with("amzn-ami")
        || description.contains("amazon linux")
    {
        return Some("Amazon Linux");
    }
    None
}

/// Whether an image of `architecture` runs on `instance_type`: arm64 images
/// on Graviton types only, x86_64 images on the others; an architecture
/// nothing is known of is left to EC2.
pub(crate) fn architecture_fits(architecture: &str, instance_type: &str) -> bool {
    match architecture {
        "arm64" => is_arm64_type(instance_type),
        "x86_64" => !is_arm64_type(instance_type),
        _ => true,
    }
}

/// The newest of Canonical's images by creation date (then name and id, so
/// two equally dated images always give the same answer).
pub(crate) fn newest(images: &[Image]) -> Option<&Image> {
    images
        .iter()
        .filter(|i| i.owner_id() == Some(CANONICAL_OWNER_ID) && i.image_id().is_some())
        .max_by(|a, b| (a.creation_date(), a.name(), a.image_id()).cmp(&(b.creation_date(), b.name(), b.image_id())))
}

fn facts(image: &Image) -> ImageFacts {
    let root = image.root_device_name().map(|name| RootDevice {
        name: name.to_owned(),
        size_gib: image
            .block_device_mappings()
            .iter()
            .find(|m| m.device_name() == Some(name))
            .and_then(|m| m.ebs())
            .and_then(|e| e.volume_size()),
    });
    let platform = image.platform().map(PlatformValues::as_str);
    let name = image.name().unwrap_or("");
    ImageFacts {
        name: name.to_owned(),
        architecture: image.architecture().map(|a| a.as_str().to_owned()).unwrap_or_default(),
        root,
        unsupported: unsupported_family(platform, image.platform_details(), name, image.description().unwrap_or("")),
    }
}

impl Ec2Cloud {
    /// What EC2 says about an AMI (DescribeImages once per AMI, then
    /// remembered); None when EC2 does not know it.
    pub(super) async fn image_facts(&self, ami: &str) -> Result<Option<ImageFacts>, CloudError> {
        if let Some(known) = self.images.lock().ok().and_then(|m| m.get(ami).cloned()) {
            return Ok(Some(known));
        }
        let images = match self.call("DescribeImages", self.client.describe_images().image_ids(ami).send()).await {
            Ok(out) => out.images.unwrap_or_default(),
            Err(CloudError::Api { code, .. }) if code.starts_with("InvalidAMIID") => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(image) = images.iter().find(|i| i.image_id() == Some(ami)) else { return Ok(None) };
        let known = facts(image);
        if let Ok(mut m) = self.images.lock() {
            m.insert(ami.to_owned(), known.clone());
        }
        Ok(Some(known))
    }

    /// See [`crate::cloud::Cloud::latest_ubuntu`].
    pub(super) async fn newest_ubuntu(&self) -> Result<ResolvedAmi, CloudError> {
        let out = self
            .call(
                "DescribeImages",
                self.client
                    .describe_images()
                    .owners(CANONICAL_OWNER_ID)
                    .filters(filter("name", [UBUNTU_NOBLE_AMD64_NAME]))
                    .filters(filter("architecture", ["x86_64"]))
                    .filters(filter("state", ["available"]))
                    .send(),
            )
            .await?;
        let images = out.images.unwrap_or_default();
        let region = self.client.config().region().map(|r| r.to_string()).unwrap_or_default();
        let image = newest(&images).ok_or(CloudError::NoUbuntuImage { owner: CANONICAL_OWNER_ID, region })?;
        let resolved = ResolvedAmi {
            image_id: image.image_id().unwrap_or_default().to_owned(),
            name: image.name().unwrap_or_default().to_owned(),
        };
        if let Ok(mut m) = self.images.lock() {
            m.insert(resolved.image_id.clone(), facts(image));
        }
        info!(ami = %resolved.image_id, name = %resolved.name, "newest Ubuntu 24.04 LTS image from Canonical");
        Ok(resolved)
    }

    /// See [`crate::cloud::Cloud::check_image`].
    pub(super) async fn refuse_unsupported(
        &self,
        ami: &str,
        field: &str,
        instance_type: &str,
    ) -> Result<(), CloudError> {
        let Some(facts) = self.image_facts(ami).await? else { return Ok(()) };
        if let Some(family) = facts.unsupported {
            return Err(CloudError::UnsupportedImage {
                field: field.to_owned(),
                ami: ami.to_owned(),
                name: facts.name,
                family,
            });
        }
        if !architecture_fits(&facts.architecture, instance_type) {
            return Err(CloudError::ArchitectureMismatch {
                field: field.to_owned(),
                ami: ami.to_owned(),
                architecture: facts.architecture,
                instance_type: instance_type.to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_amazon_linux_rhel_and_suse_are_refused_by_what_ec2_says_of_them() {
        let cases = [
            (Some("windows"), Some("Windows"), "Windows_Server-2022-English-Full-Base-2026.11.12", "", Some("Windows")),
            (
                None,
                Some("Linux/UNIX"),
                "al2023-ami-2023.6.20261120.0-kernel-6.1-x86_64",
                "Amazon Linux 2023 AMI",
                Some("Amazon Linux"),
            ),
            (None, None, "amzn2-ami-hvm-2.0.20180810-x86_64-gp2", "Amazon Linux 2 AMI", Some("Amazon Linux")),
            (
                None,
                Some("Red Hat Enterprise Linux"),
                "RHEL-9.4.0_HVM-20240605-x86_64-82-Hourly2-GP3",
                "",
                Some("Red Hat Enterprise Linux"),
            ),
            (None, Some("SUSE Linux"), "suse-sles-15-sp6-v20240601-hvm-ssd-x86_64", "", Some("SUSE Linux Enterprise")),
            (
                None,
                Some("Linux/UNIX"),
                "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20261120",
                "Canonical, Ubuntu, 24.04, amd64 noble image",
                None,
            ),
            (None, Some("Linux/UNIX"), "debian-12-amd64-20261110-1929", "Debian 12 (20261110-1929)", None),
            (None, None, "my-golden-image", "", None),
        ];
        for (platform, details, name, description, want) in cases {
            assert_eq!(unsupported_family(platform, details, name, description), want, "{name}");
        }
    }

    #[test]
    fn an_image_runs_only_on_instance_types_of_its_architecture() {
        assert!(architecture_fits("x86_64", "t3.micro"));
        assert!(architecture_fits("arm64", "t4g.small"));
        assert!(!architecture_fits("arm64", "t3.micro"));
        assert!(!architecture_fits("x86_64", "m7g.large"));
        assert!(architecture_fits("", "t3.micro"), "unknown: EC2 decides");
    }

    fn image(id: &str, owner: &str, created: &str) -> Image {
        Image::builder().image_id(id).owner_id(owner).creation_date(created).name(format!("n-{id}")).build()
    }

    #[test]
    fn the_newest_of_canonicals_images_is_chosen_and_the_choice_does_not_depend_on_order() {
        let images = vec![
            image("ami-01", CANONICAL_OWNER_ID, "2026-10-01T10:00:00.000Z"),
            image("ami-03", "123456789012", "2026-12-01T10:00:00.000Z"),
            image("ami-02", CANONICAL_OWNER_ID, "2026-11-20T10:00:00.000Z"),
            image("ami-04", CANONICAL_OWNER_ID, "2026-11-20T10:00:00.000Z"),
        ];
        assert_eq!(newest(&images).and_then(Image::image_id), Some("ami-04"));
        let reversed: Vec<Image> = images.into_iter().rev().collect();
        assert_eq!(newest(&reversed).and_then(Image::image_id), Some("ami-04"));
        let others = [image("ami-03", "123456789012", "2026-12-01T10:00:00.000Z")];
        assert_eq!(newest(&others), None, "another owner's image never stands in for Canonical's");
    }
}
