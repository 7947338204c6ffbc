//! The SSH private key from the stack's Secret.

use std::fmt;
use std::sync::Arc;

use russh::keys::{HashAlg, PrivateKey};

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
    pub fn fingerprint(&self) -> String {
        self.key.public_key().fingerprint(HashAlg::Sha256).to_string()
    }

    pub fn private(&self) -> Arc<PrivateKey> {
        self.key.clone()
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
    fn garbage_is_refused_naming_the_secret() {
        let err = SshKey::parse("hello", "demo-ssh", "ssh-privatekey").unwrap_err();
        assert!(err.to_string().starts_with("Secret demo-ssh: key \"ssh-privatekey\" is not"), "{err}");
    }
}
