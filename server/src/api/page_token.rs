//! Opaque, tamper-evident page tokens.
//!
//! A token is `base64url(version ‖ note_id ‖ HMAC-SHA256)`, the MAC covering
//! the owner too. Any server holding the shared key can continue a listing
//! another started (the service is stateless), a token altered by one bit is
//! refused, and a token issued to one caller is refused for every other, so
//! it can never reveal someone else's notes.

use aws_lc_rs::hmac;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;

const VERSION: u8 = 1;
const TAG_LEN: usize = 32;
const TOKEN_LEN: usize = 1 + 16 + TAG_LEN;

/// The shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// Seals and opens page tokens with one deployment-wide key.
pub struct PageTokens {
    key: hmac::Key,
}

/// A page-token key shorter than [`MIN_KEY_LEN`].
#[derive(Debug, thiserror::Error)]
#[error("the key holds {0} bytes; at least {MIN_KEY_LEN} are required")]
pub struct KeyTooShort(pub usize);

/// A page token that is not one this deployment issued to this caller.
#[derive(Debug, thiserror::Error)]
#[error("is not a page token this service issued to this caller")]
pub struct InvalidPageToken;

impl PageTokens {
    /// Seals with `secret`, which must be at least [`MIN_KEY_LEN`] bytes.
    pub fn new(secret: &[u8]) -> Result<Self, KeyTooShort> {
        if secret.len() < MIN_KEY_LEN {
            return Err(KeyTooShort(secret.len()));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    fn tag(&self, owner: &str, body: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"notes.v1.ListNotes.page_token\0");
        ctx.update(&(owner.len() as u64).to_be_bytes());
        ctx.update(owner.as_bytes());
        ctx.update(body);
        ctx.sign()
    }

    /// A token to continue `owner`'s listing after `after`.
    pub fn seal(&self, owner: &str, after: Uuid) -> String {
        let mut token = Vec::with_capacity(TOKEN_LEN);
        token.push(VERSION);
        token.extend_from_slice(after.as_bytes());
        let tag = self.tag(owner, &token);
        token.extend_from_slice(tag.as_ref());
        URL_SAFE_NO_PAD.encode(token)
    }

    /// The note id to continue after, if `token` was sealed for `owner`.
    pub fn open(&self, owner: &str, token: &str) -> Result<Uuid, InvalidPageToken> {
        if token.len() > 2 * TOKEN_LEN {
            return Err(InvalidPageToken);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| InvalidPageToken)?;
        if raw.len() != TOKEN_LEN || raw[0] != VERSION {
            return Err(InvalidPageToken);
        }
        let (body, tag) = raw.split_at(1 + 16);
        let expected = self.tag(owner, body);
        // Constant-time comparison of the MAC.
        aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_ref(), tag)
            .map_err(|_| InvalidPageToken)?;
        Uuid::from_slice(&body[1..]).map_err(|_| InvalidPageToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> PageTokens {
        PageTokens::new(&[7; 32]).unwrap()
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(PageTokens::new(&[7; 31]).is_err());
    }

    #[test]
    fn a_sealed_token_opens_for_its_owner() {
        let id = Uuid::now_v7();
        let token = tokens().seal("alice", id);
        assert_eq!(tokens().open("alice", &token).unwrap(), id);
    }

    #[test]
    fn a_token_is_refused_for_another_owner() {
        let token = tokens().seal("alice", Uuid::now_v7());
        assert!(tokens().open("bob", &token).is_err());
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let token = tokens().seal("alice", Uuid::now_v7());
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for byte in 0..raw.len() {
            for bit in 0..8 {
                let mut bad = raw.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    tokens()
                        .open("alice", &URL_SAFE_NO_PAD.encode(&bad))
                        .is_err()
                );
            }
        }
    }

    /// Cognito subjects are UUIDs: every owner of one pool has the same
    /// length, so the owner's bytes, not its length, must bind the token.
    #[test]
    fn a_token_is_refused_for_another_owner_of_the_same_length() {
        let alice = "7d5a0c3e-5b1f-4f2a-9c1d-00000000a11c";
        let mallory = "7d5a0c3e-5b1f-4f2a-9c1d-00000000ba11";
        assert_eq!(alice.len(), mallory.len());
        let token = tokens().seal(alice, Uuid::now_v7());
        assert!(tokens().open(mallory, &token).is_err());
        assert!(tokens().open(alice, &token).is_ok());
    }

    proptest::proptest! {
        /// A token opens for exactly the owner and key it was sealed with,
        /// owners generated as Cognito makes them (UUIDs, so of one length,
        /// with or without a pool prefix).
        #[test]
        fn a_token_opens_only_for_its_owner_and_key(
            owner in owner(),
            other in owner(),
            key in proptest::array::uniform32(proptest::prelude::any::<u8>()),
            other_key in proptest::array::uniform32(proptest::prelude::any::<u8>()),
            id in proptest::prelude::any::<u128>(),
        ) {
            let id = Uuid::from_u128(id);
            let sealer = PageTokens::new(&key).unwrap();
            let token = sealer.seal(&owner, id);
            proptest::prop_assert_eq!(sealer.open(&owner, &token).ok(), Some(id));
            if other != owner {
                proptest::prop_assert!(sealer.open(&other, &token).is_err());
            }
            if other_key != key {
                let other_sealer = PageTokens::new(&other_key).unwrap();
                proptest::prop_assert!(other_sealer.open(&owner, &token).is_err());
            }
        }

        /// Any string at all is refused or opened, never a panic; what is
        /// not a sealed token is refused.
        #[test]
        fn any_input_is_refused_without_a_panic(input in ".{0,200}", bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let sealer = tokens();
            proptest::prop_assert!(sealer.open("alice", &input).is_err());
            let encoded = URL_SAFE_NO_PAD.encode(&bytes);
            proptest::prop_assert!(sealer.open("alice", &encoded).is_err());
        }
    }

    /// A Cognito-shaped owner: a UUID `sub`, sometimes behind a pool prefix.
    fn owner() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        (
            any::<u128>(),
            prop_oneof![Just(""), Just("pool2:"), Just("services:")],
        )
            .prop_map(|(sub, prefix)| format!("{prefix}{}", Uuid::from_u128(sub)))
    }

    #[test]
    fn garbage_and_other_keys_are_refused() {
        for garbage in ["", "x", "!!!!", &"A".repeat(66), &"A".repeat(10_000)] {
            assert!(tokens().open("alice", garbage).is_err(), "{garbage:?}");
        }
        let token = PageTokens::new(&[8; 32])
            .unwrap()
            .seal("alice", Uuid::now_v7());
        assert!(tokens().open("alice", &token).is_err());
    }
}
