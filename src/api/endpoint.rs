//! Which EC2 endpoints `spec.aws.endpoint` may name.
//!
//! The operator signs every EC2 request with its own credentials (a
//! temporary session token included) and sends it to the stack's endpoint.
//! Whoever may create a VotingStack must not be able to point those requests
//! at a server of their choosing, so by default only https:// endpoints of
//! the EC2 service on AWS hosts are used; the operator's `--allow-endpoint`
//! flag admits others (an EC2-compatible test endpoint), one origin
//! (scheme, host, port) at a time.

use url::{Origin, Url};

use super::spec::VotingStackSpec;
use super::validate::FieldError;

/// The operator flag that admits an endpoint.
pub const ALLOW_ENDPOINT_FLAG: &str = "--allow-endpoint";
/// The environment variable holding the same list, comma separated.
pub const ALLOW_ENDPOINTS_ENV: &str = "VOTINGSTACK_ALLOW_ENDPOINTS";

/// DNS suffixes of AWS service endpoints.
const AWS_SUFFIXES: [&str; 3] = [".amazonaws.com", ".amazonaws.com.cn", ".api.aws"];
/// Host labels that name the EC2 service itself (`ec2.eu-west-1.amazonaws.com`,
/// `ec2-fips.us-east-1.amazonaws.com`, `ec2.us-east-1.api.aws`,
/// `vpce-….ec2.us-east-1.vpce.amazonaws.com`). Other hosts under the AWS
/// suffixes may be anyone's: an API Gateway stage answers on
/// `<id>.execute-api.<region>.amazonaws.com` with a valid certificate.
const EC2_LABELS: [&str; 2] = ["ec2", "ec2-fips"];

/// An `--allow-endpoint` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ALLOW_ENDPOINT_FLAG} {url:?}: {problem}")]
pub struct AllowEndpointError {
    pub url: String,
    pub problem: String,
}

/// The endpoints the operator may send its signed EC2 requests to: https://
/// EC2 hosts of AWS, and the origins allowed by flag.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    allowed: Vec<Origin>,
}

impl EndpointPolicy {
    /// AWS endpoints plus each of `urls` (scheme, host and port; `https://h`
    /// and `https://h:443` are the same origin). A URL with user
    /// information, a path, a query or a fragment is refused: the allowance
    /// is for an origin, exactly.
    pub fn allowing<S: AsRef<str>>(urls: impl IntoIterator<Item = S>) -> Result<Self, AllowEndpointError> {
        let mut allowed = Vec::new();
        for raw in urls {
            let raw = raw.as_ref().trim();
            if raw.is_empty() {
                continue;
            }
            let refuse = |problem: &str| AllowEndpointError { url: raw.to_string(), problem: problem.to_string() };
            let url = Url::parse(raw).map_err(|e| refuse(&format!("not a URL ({e})")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(refuse("must be an http:// or https:// URL"));
            }
            if url.host().is_none() {
                return Err(refuse("has no host"));
            }
            if has_userinfo(&url) {
                return Err(refuse("must not carry user information (user:password@)"));
            }
            if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
                return Err(refuse("must be scheme://host[:port] only, without a path, query or fragment"));
            }
            let origin = url.origin();
            if !allowed.contains(&origin) {
                allowed.push(origin);
            }
        }
        Ok(EndpointPolicy { allowed })
    }

    /// AWS endpoints plus the origins [`ALLOW_ENDPOINTS_ENV`] lists (comma
    /// separated), for programs without the operator's flags.
    pub fn from_env() -> Result<Self, AllowEndpointError> {
        let list = std::env::var(ALLOW_ENDPOINTS_ENV).unwrap_or_default();
        EndpointPolicy::allowing(list.split(','))
    }

    /// The origins allowed by flag, as `scheme://host[:port]`.
    pub fn allowed(&self) -> Vec<String> {
        self.allowed.iter().map(Origin::ascii_serialization).collect()
    }

    /// Why the operator will not send its requests to `endpoint`, or None
    /// when it may.
    pub fn refusal(&self, endpoint: &str) -> Option<String> {
        let url = match Url::parse(endpoint) {
            Ok(url) => url,
            Err(e) => return Some(format!("{endpoint:?} is not a URL ({e})")),
        };
        if has_userinfo(&url) {
            let mut shown = url.clone();
            // Cannot fail on a URL with a host, which one with user information has.
            let _ = (shown.set_username(""), shown.set_password(None));
            return Some(format!(
                "{:?} (user information left out here) carries user information (user:password@); the operator's \
                 requests are signed with its own AWS credentials, never with credentials in the URL",
                shown.as_str()
            ));
        }
        if self.allowed.contains(&url.origin()) {
            return None;
        }
        let why = if url.scheme() != "https" {
            "it is not https://"
        } else if !is_aws_ec2_host(url.host_str().unwrap_or_default()) {
            "its host is not an EC2 endpoint of AWS (ec2 or ec2-fips under .amazonaws.com, .amazonaws.com.cn or .api.aws)"
        } else {
            return None;
        };
        let origin = url.origin().ascii_serialization();
        Some(format!(
            "{endpoint:?} is refused: {why}. The operator signs its EC2 requests with its own AWS credentials \
             (a session token included) and sends them to this endpoint, so it uses only https:// EC2 endpoints \
             of AWS unless it runs with {ALLOW_ENDPOINT_FLAG} {origin} (or {ALLOW_ENDPOINTS_ENV}={origin})"
        ))
    }

    /// The problem with `spec.aws.endpoint` under this policy, if any.
    pub fn check(&self, spec: &VotingStackSpec) -> Option<FieldError> {
        let endpoint = spec.aws.endpoint.as_deref()?;
        let message = self.refusal(endpoint)?;
        Some(FieldError { path: "spec.aws.endpoint".into(), message })
    }
}

fn has_userinfo(url: &Url) -> bool {
    !url.username().is_empty() || url.password().is_some()
}

/// An EC2 endpoint host of AWS: under an AWS suffix, with `ec2` (or
/// `ec2-fips`) as one of its labels before the suffix.
fn is_aws_ec2_host(host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    AWS_SUFFIXES.iter().any(|suffix| {
        host.strip_suffix(suffix)
            .is_some_and(|name| !name.is_empty() && name.split('.').any(|label| EC2_LABELS.contains(&label)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::spec;

    fn aws_only() -> EndpointPolicy {
        EndpointPolicy::default()
    }

    fn allowing(urls: &[&str]) -> EndpointPolicy {
        EndpointPolicy::allowing(urls).expect("valid allowances")
    }

    #[test]
    fn https_ec2_hosts_of_aws_are_accepted() {
        for endpoint in [
            "https://ec2.us-east-1.amazonaws.com",
            "https://ec2.eu-west-1.amazonaws.com/",
            "https://ec2-fips.us-east-1.amazonaws.com",
            "https://ec2.cn-north-1.amazonaws.com.cn",
            "https://ec2.us-east-1.api.aws",
            "https://vpce-0123456789abcdef0-abcdefgh.ec2.us-east-1.vpce.amazonaws.com",
            "https://EC2.US-EAST-1.AMAZONAWS.COM",
        ] {
            assert_eq!(aws_only().refusal(endpoint), None, "{endpoint}");
        }
    }

    #[test]
    fn http_to_an_aws_host_is_refused() {
        let why = aws_only().refusal("http://ec2.us-east-1.amazonaws.com").expect("refused");
        assert!(why.contains("it is not https://"), "{why}");
        assert!(why.contains("--allow-endpoint http://ec2.us-east-1.amazonaws.com"), "{why}");
    }

    #[test]
    fn https_hosts_outside_aws_ec2_are_refused() {
        for endpoint in [
            "https://attacker.example",
            "https://ec2.us-east-1.amazonaws.com.attacker.example",
            "https://attackeramazonaws.com",
            "https://amazonaws.com",
            "https://abc123defg.execute-api.us-east-1.amazonaws.com",
            "https://203.0.113.7",
            "https://[2001:db8::1]:8443",
        ] {
            let why = aws_only().refusal(endpoint).unwrap_or_else(|| panic!("{endpoint} accepted"));
            assert!(why.contains("not an EC2 endpoint of AWS"), "{endpoint}: {why}");
        }
    }

    #[test]
    fn user_information_is_refused_even_for_an_allowed_origin() {
        for endpoint in ["https://user:secret@ec2.us-east-1.amazonaws.com", "http://user@127.0.0.1:5055"] {
            let why = allowing(&["http://127.0.0.1:5055"]).refusal(endpoint).expect("refused");
            assert!(why.contains("user information"), "{why}");
            assert!(!why.contains("secret@"), "the message repeats no password: {why}");
        }
    }

    #[test]
    fn an_allowed_origin_is_accepted_exactly() {
        let policy = allowing(&["http://127.0.0.1:5055"]);
        assert_eq!(policy.refusal("http://127.0.0.1:5055"), None);
        assert_eq!(policy.refusal("http://127.0.0.1:5055/"), None);
        for other in ["http://127.0.0.1:5056", "https://127.0.0.1:5055", "http://localhost:5055", "http://127.0.0.1"] {
            assert!(policy.refusal(other).is_some(), "{other} accepted");
        }
        let default_port = allowing(&["https://ec2.internal.example"]);
        assert_eq!(default_port.refusal("https://ec2.internal.example:443"), None, "443 is https's port");
        assert!(default_port.refusal("https://ec2.internal.example:8443").is_some());
    }

    #[test]
    fn the_same_host_on_another_port_is_refused_and_the_message_names_field_url_why_and_flag() {
        let mut s = spec();
        s.aws.endpoint = Some("http://127.0.0.1:6066".into());
        let problem = allowing(&["http://127.0.0.1:5055"]).check(&s).expect("refused");
        assert_eq!(problem.path, "spec.aws.endpoint");
        let text = problem.to_string();
        for part in [
            "spec.aws.endpoint: ",
            "\"http://127.0.0.1:6066\"",
            "not https://",
            "--allow-endpoint http://127.0.0.1:6066",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text}");
        }
    }

    #[test]
    fn an_unset_endpoint_is_never_refused() {
        assert_eq!(aws_only().check(&spec()), None);
    }

    #[test]
    fn allowances_are_origins_only() {
        assert_eq!(
            allowing(&["http://127.0.0.1:5055/", " ", "http://127.0.0.1:5055"]).allowed(),
            ["http://127.0.0.1:5055"]
        );
        for bad in
            ["127.0.0.1:5055", "ftp://host", "http://u:p@127.0.0.1:5055", "http://127.0.0.1:5055/ec2", "http://h?x=1"]
        {
            let e = EndpointPolicy::allowing([bad]).expect_err(bad);
            assert!(e.to_string().starts_with("--allow-endpoint "), "{e}");
        }
    }
}
