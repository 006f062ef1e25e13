//! The SSB message format: ids, keys, canonical JSON, signing and validation.
//!
//! Everything here is pure (no I/O), so it is tested without a store or a
//! network.

pub mod ids;
pub mod json;
pub mod keys;
pub mod message;

pub use ids::{FeedId, MsgId};
pub use keys::Keypair;
pub use message::{FeedTip, Message, MAX_MESSAGE_UTF16};

/// Why a message, id or key was refused.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// Not `@<44 base64 characters>.ed25519`.
    #[error("malformed feed id {0:?}: expected @<base64 of 32 bytes>.ed25519")]
    BadFeedId(String),
    /// Not `%<44 base64 characters>.sha256`.
    #[error("malformed message id {0:?}: expected %<base64 of 32 bytes>.sha256")]
    BadMsgId(String),
    /// The secret file cannot be used.
    #[error("unusable secret file: {0}")]
    BadSecret(String),
    /// The message is not a JSON object.
    #[error("message is not a JSON object")]
    NotAnObject,
    /// The seven keys are missing, extra or out of order.
    #[error("message keys must be previous, author, sequence, timestamp, hash, content, signature; got {0}")]
    KeyOrder(String),
    /// The signed text exceeds the size limit.
    #[error("message is {0} UTF-16 units long; the limit is 8192")]
    TooLarge(usize),
    /// The signature does not match.
    #[error("signature does not verify")]
    BadSignature,
    /// A sequence number other than the next one.
    #[error("expected sequence {expected}, got {got}")]
    OutOfOrder {
        /// The sequence the feed needs next.
        expected: u64,
        /// The sequence the message has.
        got: u64,
    },
    /// The right sequence but a different `previous`: the author forked.
    #[error("fork at sequence {sequence}: previous does not match the stored message")]
    Fork {
        /// The sequence at which the feeds diverge.
        sequence: u64,
    },
    /// Any other malformed field.
    #[error("invalid message: {0}")]
    Invalid(String),
}
