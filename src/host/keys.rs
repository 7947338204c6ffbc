//! The SSH private key from the stack's Secret, and the host keys the
//! operator gives the instances it launches.

use std::fmt;
use std::sync::Arc;

use hkdf::Hkdf;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};
use sha2_hkdf::Sha256;

/// HKDF's salt for host keys: the domain and version of the derivation.
const HOST_KEY_LABEL: &[u8] = b"votingstack host key v2";

/// Why a Secret's key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("Secret {secret}: key {key:?} is missing")]
    MissingKey { secret: String, key: String },
    #[error("Secret {secret} was not found in namespace {namespace}")]
    MissingSecret { secret: String, namespace: String },
    #[error("Secret {secret}: key {key:?} is not an unencrypted OpenSSH or PEM private key ({detail})")]
    Unparsable { secret: String, key: String, detail: String },
}

/// An SSH private key. Its Debug output never shows key material.
#[derive(Clone)]
pub struct SshKey {
    key: Arc<PrivateKey>,
    public_openssh: String,
}

impl SshKey {
    /// Parses a private key as stored in a Secret. `secret` and `key` only
    /// name the source in errors.
    pub fn parse(text: &str, secret: &str, key: &str) -> Result<SshKey, KeyError> {
        let unparsable = |detail: String| KeyError::Unparsable { secret: secret.into(), key: key.into(), detail };
        let private = russh::keys::decode_secret_key(text, None).map_err(|e| unparsable(e.to_string()))?;
        let public_openssh = private.public_key().to_openssh().map_err(|e| unparsable(e.to_string()))?;
        Ok(SshKey { key: Arc::new(private), public_openssh })
    }

    /// The public half in OpenSSH format, as imported into EC2.
    pub fn public_openssh(&self) -> &str {
        &self.public_openssh
    }

    /// SHA256 fingerprint of the public key.
    fn fingerprint(&self) -> String {
        self.key.public_key().fingerprint(HashAlg::Sha256).to_string()
    }

    /// The private key, for the SSH login.
    pub(super) fn private(&self) -> Arc<PrivateKey> {
        self.key.clone()
    }

    /// The SSH host key of the instance launched with `client_token`.
    ///
    /// Derived, not stored: an ed25519 key whose seed is HKDF-SHA256 of
    /// this private key's secret material (not its file encoding, which
    /// carries a comment and random check bytes: re-encoding the Secret
    /// changes nothing), salted with [`HOST_KEY_LABEL`], with the token as
    /// HKDF's info. Only the holder of the stack's key can compute it, the
    /// same token always gives the same key (a retried launch, a restarted
    /// operator), and a replacement instance (a new token) gets a new one.
    /// Its public half is pinned before the first connection; the private
    /// half goes only into the instance's user data.
    pub fn host_key_for(&self, client_token: &str) -> Result<HostKey, KeyError> {
        let failed =
            |detail: String| KeyError::Unparsable { secret: "(host key)".into(), key: client_token.into(), detail };
        let material = secret_material(&self.key).map_err(failed)?;
        let mut seed = [0u8; 32];
        Hkdf::<Sha256>::new(Some(HOST_KEY_LABEL), &material)
            .expand(client_token.as_bytes(), &mut seed)
            .map_err(|e| failed(e.to_string()))?;
        let private = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        let private_openssh = private.to_openssh(LineEnding::LF).map_err(|e| failed(e.to_string()))?.to_string();
        let public_openssh = private.public_key().to_openssh().map_err(|e| failed(e.to_string()))?;
        let fingerprint = private.public_key().fingerprint(HashAlg::Sha256).to_string();
        Ok(HostKey { private_openssh, public_openssh, fingerprint })
    }
}

impl SshKey {
    /// The fingerprint of the host key the release before the HKDF
    /// derivation gave the instance launched with `client_token`: an
    /// ed25519 key seeded with SHA-256 over a v1 label, the key file's
    /// encoding and the token. Only ever compared with what a host that was
    /// never reached presents; never used to launch.
    pub fn earlier_host_key_fingerprint(&self, client_token: &str) -> Result<String, KeyError> {
        use sha2_hkdf::Digest;
        let failed =
            |detail: String| KeyError::Unparsable { secret: "(host key)".into(), key: client_token.into(), detail };
        let material = self.key.to_bytes().map_err(|e| failed(e.to_string()))?;
        let mut hash = Sha256::new();
        hash.update(b"votingstack host key v1\0");
        hash.update(material.as_slice());
        hash.update(client_token.as_bytes());
        let seed: [u8; 32] = hash.finalize().into();
        let private = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        Ok(private.public_key().fingerprint(HashAlg::Sha256).to_string())
    }
}

/// sshd's drop-in file written by the user data (read by the
/// `Include /etc/ssh/sshd_config.d/*.conf` of Debian 12 and Ubuntu 22.04 on).
pub const SSHD_DROP_IN: &str = "/etc/ssh/sshd_config.d/60-votingstack.conf";
/// Its text: a client silent for 3 probes 15 s apart is dropped.
pub const SSHD_CLIENT_ALIVE: &str = "ClientAliveInterval 15\nClientAliveCountMax 3\n";

/// The secret numbers of a private key, each length-prefixed: what the
/// key is, whatever file it came from.
fn secret_material(key: &PrivateKey) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut put = |part: &[u8]| {
        out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(part);
    };
    put(key.algorithm().as_str().as_bytes());
    match key.key_data() {
        KeypairData::Ed25519(k) => put(&k.private.to_bytes()),
        KeypairData::Rsa(k) => {
            let p = k.private();
            for part in [p.d(), p.p(), p.q()] {
                put(part.as_bytes());
            }
        }
        KeypairData::Ecdsa(k) => put(k.private_key_bytes()),
        KeypairData::Dsa(k) => put(k.private().as_bytes()),
        _ => {
            return Err(format!(
                "a {} key holds no secret the operator can derive host keys from; use an ed25519, RSA or ECDSA key",
                key.algorithm().as_str()
            ))
        }
    }
    Ok(out)
}

/// An SSH host key the operator gives an instance. Its Debug output shows
/// the fingerprint only.
#[derive(Clone)]
pub struct HostKey {
    private_openssh: String,
    pub public_openssh: String,
    /// SHA256 fingerprint, as pinned in status.
    pub fingerprint: String,
}

impl HostKey {
    /// cloud-init user data that installs this key as the instance's only
    /// SSH host key (`ssh_keys`, no generated keys, old keys deleted), and
    /// makes sshd drop a client that stopped answering within about 45 s
    /// ([`SSHD_CLIENT_ALIVE`]), so a dead or partitioned operator's channels,
    /// and the apply lock one of them holds, do not outlive it by hours.
    pub fn user_data(&self) -> String {
        let indent_by = |n: usize, text: &str| {
            text.trim_end().lines().map(|l| format!("{:n$}{l}", "")).collect::<Vec<_>>().join("\n")
        };
        format!(
            "#cloud-config\nssh_deletekeys: true\nssh_genkeytypes: []\nssh_keys:\n  ed25519_private: |\n{}\n  ed25519_public: {}\n\
             write_files:\n  - path: {SSHD_DROP_IN}\n    permissions: '0644'\n    content: |\n{}\n",
            indent_by(4, &self.private_openssh),
            self.public_openssh.trim(),
            indent_by(6, SSHD_CLIENT_ALIVE),
        )
    }
}

impl fmt::Debug for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostKey({})", self.fingerprint)
    }
}

impl fmt::Debug for SshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SshKey({})", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::TEST_KEY;

    #[test]
    fn public_half_and_fingerprint_come_from_the_private_key() {
        let key = SshKey::parse(TEST_KEY, "demo-ssh", "ssh-privatekey").unwrap();
        assert!(key.public_openssh().starts_with("ssh-ed25519 AAAA"));
        assert!(key.fingerprint().starts_with("SHA256:"));
        assert_eq!(format!("{key:?}"), format!("SshKey({})", key.fingerprint()));
    }

    #[test]
    fn host_keys_are_derived_per_launch_and_never_shown() {
        let key = SshKey::parse(TEST_KEY, "demo-ssh", "ssh-privatekey").unwrap();
        let a = key.host_key_for("vs-token-a").unwrap();
        assert_eq!(a.fingerprint, key.host_key_for("vs-token-a").unwrap().fingerprint, "same token, same key");
        assert_ne!(a.fingerprint, key.host_key_for("vs-token-b").unwrap().fingerprint);
        assert_ne!(a.fingerprint, key.fingerprint());
        assert!(a.public_openssh.starts_with("ssh-ed25519 "));
        assert_eq!(format!("{a:?}"), format!("HostKey({})", a.fingerprint));
        let data = a.user_data();
        assert!(data.starts_with("#cloud-config\n"));
        assert!(data.contains("  ed25519_private: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n"), "{data}");
        let parsed: serde_yaml::Value = serde_yaml::from_str(&data).unwrap();
        let back = parsed["ssh_keys"]["ed25519_private"].as_str().unwrap();
        let reread = russh::keys::decode_secret_key(back, None).unwrap();
        assert_eq!(reread.public_key().fingerprint(HashAlg::Sha256).to_string(), a.fingerprint);
        let sshd = &parsed["write_files"][0];
        assert_eq!(sshd["path"].as_str(), Some("/etc/ssh/sshd_config.d/60-votingstack.conf"));
        assert_eq!(sshd["content"].as_str(), Some("ClientAliveInterval 15\nClientAliveCountMax 3\n"));
    }

    #[test]
    fn host_keys_depend_on_the_key_not_on_how_its_file_is_encoded() {
        let key = SshKey::parse(TEST_KEY, "demo-ssh", "ssh-privatekey").unwrap();
        // The same key written again with another comment (and new random check bytes).
        let mut private = (*key.private()).clone();
        private.set_comment("someone@elsewhere");
        let text = private.to_openssh(LineEnding::CRLF).unwrap().to_string();
        assert_ne!(text.trim(), TEST_KEY.trim());
        let again = SshKey::parse(&text, "demo-ssh", "ssh-privatekey").unwrap();
        assert_eq!(key.host_key_for("vs-t").unwrap().fingerprint, again.host_key_for("vs-t").unwrap().fingerprint);
        // Another key, another host key.
        let other = PrivateKey::from(Ed25519Keypair::from_seed(&[7; 32]));
        let other = SshKey::parse(&other.to_openssh(LineEnding::LF).unwrap(), "s", "k").unwrap();
        assert_ne!(key.host_key_for("vs-t").unwrap().fingerprint, other.host_key_for("vs-t").unwrap().fingerprint);
    }

    #[test]
    fn the_derivation_is_hkdf_sha256_over_the_secret_with_its_label() {
        let seed = [7u8; 32];
        let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        let ssh = SshKey::parse(&key.to_openssh(LineEnding::LF).unwrap(), "s", "k").unwrap();
        let mut ikm = Vec::new();
        for part in [&b"ssh-ed25519"[..], &seed[..]] {
            ikm.extend_from_slice(&(part.len() as u32).to_be_bytes());
            ikm.extend_from_slice(part);
        }
        let mut want = [0u8; 32];
        Hkdf::<Sha256>::new(Some(b"votingstack host key v2"), &ikm).expand(b"vs-t", &mut want).unwrap();
        let want = PrivateKey::from(Ed25519Keypair::from_seed(&want)).public_key().fingerprint(HashAlg::Sha256);
        assert_eq!(ssh.host_key_for("vs-t").unwrap().fingerprint, want.to_string());
    }

    #[test]
    fn the_earlier_release_host_key_is_its_v1_derivation() {
        let key = SshKey::parse(TEST_KEY, "demo-ssh", "ssh-privatekey").unwrap();
        let earlier = key.earlier_host_key_fingerprint("vs-t").unwrap();
        assert_eq!(earlier, key.earlier_host_key_fingerprint("vs-t").unwrap());
        assert_ne!(earlier, key.host_key_for("vs-t").unwrap().fingerprint, "v1 and v2 differ");
        assert_ne!(earlier, key.earlier_host_key_fingerprint("vs-u").unwrap());
        // What the release before the HKDF derivation gave an instance
        // launched with token vs-t under TEST_KEY (SHA-256 over the v1 label,
        // the key file's binary encoding and the token, as an ed25519 seed).
        assert_eq!(earlier, "SHA256:5s6QrxuI0swAHloKxMDmHqMIaweyinG8ZP0dp3CXZJE");
        let target = |expected: Option<String>, earlier: Option<String>| crate::host::HostTarget {
            stack: "default/demo".into(),
            tier: crate::api::Tier::Database,
            instance_id: "i-1".into(),
            address: std::net::Ipv4Addr::LOCALHOST,
            port: 22,
            user: "ubuntu".into(),
            expected_host_key: expected,
            earlier_host_key: earlier,
            jump: None,
            connect_timeout_secs: 5,
            command_timeout_secs: 5,
        };
        let v2 = key.host_key_for("vs-t").unwrap().fingerprint;
        let both = target(Some(v2.clone()), Some(earlier.clone()));
        assert!(both.accepts(&v2) && both.accepts(&earlier));
        assert!(!both.accepts(&key.fingerprint()), "any other key is refused");
        assert!(!target(Some(v2.clone()), None).accepts(&earlier), "once pinned, only the pin");
        assert!(target(None, None).accepts(&earlier), "first use");
    }

    #[test]
    fn garbage_is_refused_naming_the_secret() {
        let err = SshKey::parse("hello", "demo-ssh", "ssh-privatekey").unwrap_err();
        assert!(err.to_string().starts_with("Secret demo-ssh: key \"ssh-privatekey\" is not"), "{err}");
    }
}
