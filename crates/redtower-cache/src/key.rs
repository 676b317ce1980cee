//! Canonical keys: length-prefixed components, hashed with SHA-256.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

/// Builds a canonical key: every component is written as its length (u32, big-endian) and its
/// bytes, so no two different component lists produce the same canonical bytes.
#[derive(Debug, Default, Clone)]
pub(crate) struct Canonical {
    bytes: Vec<u8>,
}

impl Canonical {
    pub(crate) fn new(kind: &str) -> Self {
        let mut c = Self {
            bytes: Vec::with_capacity(128),
        };
        c.push(kind.as_bytes());
        c
    }

    pub(crate) fn push(&mut self, part: &[u8]) -> &mut Self {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&len.to_be_bytes());
        self.bytes
            .extend_from_slice(&part[..usize::try_from(len).unwrap_or(part.len())]);
        self
    }

    pub(crate) fn digest(&self) -> [u8; 32] {
        Sha256::digest(&self.bytes).into()
    }

    #[cfg(test)]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The short name of a digest used in keys: base64url of its first 128 bits (22 characters).
pub(crate) fn short(digest: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// The digest of two canonical parts together (primary and variant).
pub(crate) fn combine(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(a);
    h.update(b);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn length_prefixing_is_injective(
            a in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 0..5),
            b in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 0..5),
        ) {
            let build = |parts: &[Vec<u8>]| {
                let mut c = Canonical::new("t");
                for p in parts {
                    c.push(p);
                }
                c.as_bytes().to_vec()
            };
            prop_assert_eq!(build(&a) == build(&b), a == b);
        }
    }

    #[test]
    fn short_names_are_key_safe() {
        let s = short(&Canonical::new("x").digest());
        assert_eq!(s.len(), 22);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }
}
