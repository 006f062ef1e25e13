//! A machine's identity: an ed25519 key pair in the ssb-keys text format.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};

use super::ids::{decode_canonical, FeedId};
use super::FeedError;

/// The key pair that signs this machine's feed.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl Keypair {
    /// A fresh random key pair.
    pub fn generate() -> Self {
        Keypair {
            signing: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// The key pair whose secret seed is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Keypair {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// This key pair's feed id.
    pub fn id(&self) -> FeedId {
        FeedId(self.signing.verifying_key().to_bytes())
    }

    /// The 32-byte secret seed.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The 64-byte secret key as libsodium lays it out: seed, then public key.
    pub fn sodium_secret(&self) -> [u8; 64] {
        self.signing.to_keypair_bytes()
    }

    /// Signs `data`.
    pub fn sign(&self, data: &[u8]) -> [u8; 64] {
        self.signing.sign(data).to_bytes()
    }

    /// Parses the contents of an ssb-keys `secret` file. Lines starting with
    /// `#` are comments, as ssb-keys writes them.
    pub fn from_secret_file_text(text: &str) -> Result<Self, FeedError> {
        let json_text: String = text
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let value: Value = serde_json::from_str(&json_text)
            .map_err(|e| FeedError::BadSecret(format!("not JSON: {e}")))?;
        let curve = value.get("curve").and_then(Value::as_str);
        if curve != Some("ed25519") {
            return Err(FeedError::BadSecret(format!(
                "curve is {curve:?}, only ed25519 is supported"
            )));
        }
        let private = value
            .get("private")
            .and_then(Value::as_str)
            .ok_or_else(|| FeedError::BadSecret("no \"private\" field".into()))?;
        let private = private.strip_suffix(".ed25519").unwrap_or(private);
        let secret: [u8; 64] = decode_canonical(private)
            .ok_or_else(|| FeedError::BadSecret("\"private\" is not a 64-byte key".into()))?;
        let seed: [u8; 32] = secret[..32].try_into().expect("slice of 32");
        let keypair = Keypair::from_seed(&seed);
        if keypair.signing.verifying_key().to_bytes()[..] != secret[32..] {
            return Err(FeedError::BadSecret(
                "the private key does not match its public half".into(),
            ));
        }
        if let Some(public) = value.get("public").and_then(Value::as_str) {
            let public = public.strip_suffix(".ed25519").unwrap_or(public);
            if decode_canonical::<32>(public) != Some(keypair.id().0) {
                return Err(FeedError::BadSecret(
                    "\"public\" does not belong to \"private\"".into(),
                ));
            }
        }
        Ok(keypair)
    }

    /// The text of an ssb-keys `secret` file for this key pair.
    pub fn to_secret_file_text(&self) -> String {
        let public = format!("{}.ed25519", STANDARD.encode(self.id().0));
        let private = format!("{}.ed25519", STANDARD.encode(self.sodium_secret()));
        let body = json!({
            "curve": "ed25519",
            "public": public,
            "private": private,
            "id": self.id().to_string(),
        });
        format!(
            "# this is your SECRET name.\n\
             # this name gives you magical powers.\n\
             # with it you can mark your messages so that your friends can verify\n\
             # that they really did come from you.\n\
             #\n\
             # if any one learns this name, they can use it to destroy your identity\n\
             # NEVER show this to anyone!!!\n\
             \n{}\n\
             #\n\
             # WARNING! It's vital that you DO NOT edit OR share your secret name\n\
             # instead, share your public name\n\
             # your public name: {}\n",
            serde_json::to_string_pretty(&body).unwrap_or_default(),
            self.id()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_file_round_trips() {
        let keys = Keypair::generate();
        let text = keys.to_secret_file_text();
        let back = Keypair::from_secret_file_text(&text).expect("parses");
        assert_eq!(back.id(), keys.id());
    }

    #[test]
    fn foreign_or_corrupt_secrets_are_refused() {
        assert!(Keypair::from_secret_file_text("not json").is_err());
        assert!(Keypair::from_secret_file_text(r#"{"curve":"k256","private":"x"}"#).is_err());
        let mut other = Keypair::generate().to_secret_file_text();
        let mine = Keypair::generate();
        // A public key that belongs to someone else.
        other = other.replace(
            &other[other.find("\"public\": \"").expect("has public") + 11..][..44],
            &STANDARD.encode(mine.id().0),
        );
        assert!(Keypair::from_secret_file_text(&other).is_err());
    }
}
