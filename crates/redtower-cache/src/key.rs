//! Canonical keys: length-prefixed components, hashed with SHA-256.

use std::sync::OnceLock;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::store::EntryKey;

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

    /// The length of the canonical bytes so far (where a variant part starts).
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    #[cfg(test)]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The key of one lookup: the full canonical bytes, and (computed on first use) the store key
/// and the SHA-256 digest that the stored entry must carry.
///
/// The in-process L1 is keyed by the canonical bytes themselves and compares them in full, so
/// an L1 hit costs no hashing beyond the map's own and two requests share an L1 entry only
/// when their canonical keys are equal. Only a lookup that goes to the store hashes (SHA-256).
#[derive(Debug, Clone)]
pub(crate) struct Key {
    /// The primary part, then the variant part (if any): both self-delimiting.
    canonical: Vec<u8>,
    /// Where the variant part starts (`canonical.len()` when there is none).
    split: usize,
    resolved: OnceLock<(EntryKey, [u8; 32])>,
}

impl Key {
    /// A key without variants (a cache-aside key, or a response that varies on nothing).
    pub(crate) fn new(primary: Canonical) -> Self {
        let split = primary.len();
        Self::split(primary, split)
    }

    /// A key whose canonical bytes are a primary part (`..split`) and a variant part.
    pub(crate) fn split(canonical: Canonical, split: usize) -> Self {
        Self {
            split: split.min(canonical.len()),
            canonical: canonical.bytes,
            resolved: OnceLock::new(),
        }
    }

    /// The primary part of the canonical bytes (the URI).
    pub(crate) fn primary(&self) -> &[u8] {
        &self.canonical[..self.split]
    }

    /// The canonical bytes: the L1 key.
    pub(crate) fn canonical(&self) -> &[u8] {
        &self.canonical
    }

    /// The store key: the group is the primary part's digest, the variant the variant part's.
    pub(crate) fn entry(&self) -> &EntryKey {
        &self.resolve().0
    }

    /// The digest stored in (and checked against) the entry.
    pub(crate) fn digest(&self) -> &[u8; 32] {
        &self.resolve().1
    }

    fn resolve(&self) -> &(EntryKey, [u8; 32]) {
        self.resolved.get_or_init(|| {
            let (primary, variant) = self.canonical.split_at(self.split);
            let p: [u8; 32] = Sha256::digest(primary).into();
            if variant.is_empty() {
                return (EntryKey::new(short(&p), None), p);
            }
            let v: [u8; 32] = Sha256::digest(variant).into();
            (EntryKey::new(short(&p), Some(short(&v))), combine(&p, &v))
        })
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
