//! Content ids: the BLAKE3-256 digest of a piece of content.
//!
//! A [`ContentId`] is written as a CIDv1 with codec `raw` (0x55) and a BLAKE3 multihash
//! (code 0x1e, 32-byte digest), in multibase base32 lower, the way IPFS and iroh print
//! them: `bafkr4i...`. On the wire it travels as the binary CID ([`ContentId::to_bytes`]).
//!
//! Parsing accepts exactly that form and nothing else; every rejection is a
//! [`ContentIdError`] that says what was wrong.

use std::fmt;
use std::str::FromStr;

use multibase::Base;
use unsigned_varint::decode;

/// CID version we write and accept.
const CID_VERSION: u64 = 1;
/// Multicodec `raw`: the content is opaque bytes.
const CODEC_RAW: u64 = 0x55;
/// Multihash code of BLAKE3.
const MULTIHASH_BLAKE3: u64 = 0x1e;
/// Length of a BLAKE3-256 digest in bytes.
pub const DIGEST_LEN: usize = 32;
/// Prefix of every binary CID we write: version, codec, hash code, digest length.
/// Each of these values is below 0x80, so each varint is a single byte.
const BINARY_PREFIX: [u8; 4] = [
    CID_VERSION as u8,
    CODEC_RAW as u8,
    MULTIHASH_BLAKE3 as u8,
    DIGEST_LEN as u8,
];
/// Binary CIDv0 starts with the sha2-256 multihash header (code 0x12, length 32).
const CIDV0_PREFIX: [u8; 2] = [0x12, 0x20];
/// Multibase prefix of base32 lower.
const BASE32_LOWER_PREFIX: char = 'b';

/// Some well-known multihash codes, to name them in errors.
const HASH_NAMES: &[(u64, &str)] = &[
    (0x00, "identity"),
    (0x11, "sha1"),
    (0x12, "sha2-256"),
    (0x13, "sha2-512"),
    (0x14, "sha3-512"),
    (0x16, "sha3-256"),
    (0x1b, "keccak-256"),
    (0x1e, "blake3"),
    (0xd5, "md5"),
    (0xb220, "blake2b-256"),
    (0xb260, "blake2s-256"),
];

/// Some well-known multicodec content codecs, to name them in errors.
const CODEC_NAMES: &[(u64, &str)] = &[
    (0x51, "cbor"),
    (0x55, "raw"),
    (0x70, "dag-pb"),
    (0x71, "dag-cbor"),
    (0x72, "libp2p-key"),
    (0x0129, "dag-json"),
    (0x0200, "json"),
];

/// The BLAKE3-256 digest of a piece of content, which names that content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId([u8; DIGEST_LEN]);

impl ContentId {
    /// Length of the binary CID ([`ContentId::to_bytes`]) in bytes.
    pub const BINARY_LEN: usize = BINARY_PREFIX.len() + DIGEST_LEN;

    /// Longest binary CID [`ContentId::from_bytes`] looks at; longer inputs are rejected
    /// before any parsing.
    pub const MAX_BINARY_LEN: usize = 64;

    /// Longest text form [`ContentId::from_str`] looks at: the multibase prefix plus the
    /// base32 encoding (no padding) of [`ContentId::MAX_BINARY_LEN`] bytes.
    pub const MAX_TEXT_LEN: usize = 1 + (Self::MAX_BINARY_LEN * 8).div_ceil(5);

    /// Hashes `data` and returns its id.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// Wraps a BLAKE3-256 digest computed elsewhere.
    pub const fn from_digest(digest: [u8; DIGEST_LEN]) -> Self {
        Self(digest)
    }

    /// The BLAKE3-256 digest.
    pub const fn digest(&self) -> &[u8; DIGEST_LEN] {
        &self.0
    }

    /// Checks that `data` hashes to this id.
    pub fn verify(&self, data: &[u8]) -> Result<(), Mismatch> {
        let actual = Self::of(data);
        if actual == *self {
            Ok(())
        } else {
            Err(Mismatch {
                expected: *self,
                actual,
            })
        }
    }

    /// The binary CID: varints 1 (version), 0x55 (raw), 0x1e (blake3), 32 (digest length),
    /// then the digest.
    pub fn to_bytes(&self) -> [u8; Self::BINARY_LEN] {
        let mut out = [0u8; Self::BINARY_LEN];
        out[..BINARY_PREFIX.len()].copy_from_slice(&BINARY_PREFIX);
        out[BINARY_PREFIX.len()..].copy_from_slice(&self.0);
        out
    }

    /// Parses a binary CID as written by [`ContentId::to_bytes`].
    ///
    /// The whole input must be one CID: trailing bytes and inputs longer than
    /// [`ContentId::MAX_BINARY_LEN`] are rejected.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ContentIdError> {
        if bytes.is_empty() {
            return Err(ContentIdError::Empty);
        }
        if bytes.len() > Self::MAX_BINARY_LEN {
            return Err(ContentIdError::TooLong {
                len: bytes.len(),
                max: Self::MAX_BINARY_LEN,
            });
        }
        if bytes.starts_with(&CIDV0_PREFIX) {
            return Err(ContentIdError::CidV0);
        }
        let (version, rest) = read_varint(bytes, "CID version")?;
        if version != CID_VERSION {
            return Err(ContentIdError::UnsupportedVersion { version });
        }
        let (codec, rest) = read_varint(rest, "codec")?;
        if codec != CODEC_RAW {
            return Err(ContentIdError::UnsupportedCodec { code: codec });
        }
        let (hash, rest) = read_varint(rest, "multihash code")?;
        if hash != MULTIHASH_BLAKE3 {
            return Err(ContentIdError::UnsupportedHash { code: hash });
        }
        let (declared, digest) = read_varint(rest, "digest length")?;
        if declared < DIGEST_LEN as u64 {
            return Err(ContentIdError::DigestTooShort { declared });
        }
        if declared > DIGEST_LEN as u64 {
            return Err(ContentIdError::DigestTooLong { declared });
        }
        if digest.len() < DIGEST_LEN {
            return Err(ContentIdError::DigestTruncated {
                declared,
                actual: digest.len(),
            });
        }
        if digest.len() > DIGEST_LEN {
            return Err(ContentIdError::TrailingBytes {
                count: digest.len() - DIGEST_LEN,
            });
        }
        let mut out = [0u8; DIGEST_LEN];
        out.copy_from_slice(digest);
        Ok(Self(out))
    }
}

impl fmt::Display for ContentId {
    /// Writes the CIDv1 in base32 lower, e.g. `bafkr4i...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&multibase::encode(Base::Base32Lower, self.to_bytes()))
    }
}

impl fmt::Debug for ContentId {
    /// Writes `ContentId(<hex digest>)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({})", hex::encode(self.0))
    }
}

impl FromStr for ContentId {
    type Err = ContentIdError;

    /// Parses the text form written by [`Display`](fmt::Display): a `b`-prefixed base32
    /// lower CIDv1 with codec raw and a 32-byte BLAKE3 multihash.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(prefix) = s.chars().next() else {
            return Err(ContentIdError::Empty);
        };
        if s.starts_with("Qm") {
            // A base58btc CIDv0, which is always sha2-256.
            return Err(ContentIdError::CidV0);
        }
        if prefix != BASE32_LOWER_PREFIX {
            return Err(ContentIdError::UnsupportedMultibase { prefix });
        }
        if s.len() > Self::MAX_TEXT_LEN {
            return Err(ContentIdError::TooLong {
                len: s.len(),
                max: Self::MAX_TEXT_LEN,
            });
        }
        let body = &s[prefix.len_utf8()..];
        if let Some((index, character)) = body
            .char_indices()
            .find(|&(_, c)| !matches!(c, 'a'..='z' | '2'..='7'))
        {
            return Err(ContentIdError::InvalidBase32 {
                detail: format!(
                    "unexpected character {character:?} at position {}",
                    index + prefix.len_utf8()
                ),
            });
        }
        let bytes = Base::Base32Lower
            .decode(body)
            .map_err(|_| ContentIdError::InvalidBase32 {
                detail: format!(
                    "{} characters is not a canonical unpadded base32 encoding",
                    body.len()
                ),
            })?;
        Self::from_bytes(&bytes)
    }
}

/// Content did not hash to the id it was supposed to have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("content does not match its id: expected {expected}, but it hashes to {actual}")]
pub struct Mismatch {
    /// The id the content was supposed to have.
    pub expected: ContentId,
    /// The id the content actually hashes to.
    pub actual: ContentId,
}

/// Why a string or byte sequence is not a valid [`ContentId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentIdError {
    /// The input was empty.
    #[error("content id is empty")]
    Empty,
    /// The text form used a multibase other than base32 lower.
    #[error("unsupported multibase prefix {prefix:?}; only base32 lower (prefix 'b') is accepted")]
    UnsupportedMultibase {
        /// The first character of the input.
        prefix: char,
    },
    /// The text after the `b` prefix is not canonical base32 lower.
    #[error("content id is not valid base32 lower (alphabet a-z2-7, no padding): {detail}")]
    InvalidBase32 {
        /// What exactly was wrong.
        detail: String,
    },
    /// The input is a CIDv0 (a bare sha2-256 multihash, usually written `Qm...`).
    #[error("CIDv0 is not supported: unsupported hash function sha2-256; only blake3 is accepted")]
    CidV0,
    /// The CID version is not 1.
    #[error("unsupported CID version {version}; only CIDv1 is accepted")]
    UnsupportedVersion {
        /// The version found.
        version: u64,
    },
    /// The content codec is not raw.
    #[error("unsupported codec {}; only raw (0x55) is accepted", named_code(.code, CODEC_NAMES))]
    UnsupportedCodec {
        /// The multicodec code found.
        code: u64,
    },
    /// The multihash is not BLAKE3.
    #[error(
        "unsupported hash function {}; only blake3 (0x1e) is accepted",
        named_code(.code, HASH_NAMES)
    )]
    UnsupportedHash {
        /// The multihash code found.
        code: u64,
    },
    /// The multihash declares a digest shorter than 32 bytes.
    #[error("digest too short: the multihash declares {declared} bytes, the minimum is 32")]
    DigestTooShort {
        /// The digest length the multihash declares.
        declared: u64,
    },
    /// The multihash declares a digest longer than 32 bytes.
    #[error("digest length {declared} is not supported; only 32-byte blake3 digests are accepted")]
    DigestTooLong {
        /// The digest length the multihash declares.
        declared: u64,
    },
    /// Fewer digest bytes follow than the multihash declares.
    #[error("digest too short: the multihash declares {declared} bytes but only {actual} follow")]
    DigestTruncated {
        /// The digest length the multihash declares.
        declared: u64,
        /// How many bytes actually follow.
        actual: usize,
    },
    /// The input ended in the middle of a varint.
    #[error("truncated varint: the input ends inside the {field}")]
    TruncatedVarint {
        /// Which CID field was being read.
        field: &'static str,
    },
    /// A varint overflows 64 bits or is not minimally encoded.
    #[error("invalid varint in the {field}: overflowing or not minimally encoded")]
    InvalidVarint {
        /// Which CID field was being read.
        field: &'static str,
    },
    /// Bytes follow the digest.
    #[error("{count} trailing byte(s) after the 32-byte digest")]
    TrailingBytes {
        /// How many bytes follow the digest.
        count: usize,
    },
    /// The input is longer than any content id we accept.
    #[error("content id is too long: {len} bytes, at most {max} are accepted")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
        /// The maximum accepted length in bytes.
        max: usize,
    },
}

/// Reads one unsigned varint, naming `field` in the error.
fn read_varint<'a>(
    bytes: &'a [u8],
    field: &'static str,
) -> Result<(u64, &'a [u8]), ContentIdError> {
    decode::u64(bytes).map_err(|e| match e {
        decode::Error::Insufficient => ContentIdError::TruncatedVarint { field },
        _ => ContentIdError::InvalidVarint { field },
    })
}

/// Formats a multiformats code as `0x12 (sha2-256)`, or just `0x12` when it has no known name.
fn named_code(code: &u64, names: &[(u64, &str)]) -> String {
    match names.iter().find(|(c, _)| c == code) {
        Some((_, name)) => format!("{code:#x} ({name})"),
        None => format!("{code:#x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// BLAKE3(b"hello"), from the BLAKE3 reference implementation.
    const HELLO_DIGEST: &str = "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f";
    /// Its CIDv1 (raw, blake3) in base32 lower.
    const HELLO_CID: &str = "bafkr4ihkr4ld3m4gqkjf4reryxsy2s5tkbxprqkow6fin2iiyvreuzzab4";

    fn hello() -> ContentId {
        ContentId::of(b"hello")
    }

    /// Binary CID of `hello` with the field at `index` replaced by `replacement`.
    fn hello_bytes_with(index: usize, replacement: &[u8]) -> Vec<u8> {
        let bytes = hello().to_bytes();
        let mut out = bytes[..index].to_vec();
        out.extend_from_slice(replacement);
        out.extend_from_slice(&bytes[index + 1..]);
        out
    }

    fn text_of(bytes: &[u8]) -> String {
        multibase::encode(Base::Base32Lower, bytes)
    }

    #[test]
    fn known_vector_hello() {
        let id = hello();
        assert_eq!(hex::encode(id.digest()), HELLO_DIGEST);
        assert_eq!(id.to_string(), HELLO_CID);
        assert_eq!(HELLO_CID.parse::<ContentId>(), Ok(id));
        assert_eq!(format!("{id:?}"), format!("ContentId({HELLO_DIGEST})"));
    }

    #[test]
    fn text_starts_like_ipfs_blake3_raw_cids() {
        assert!(
            ContentId::of(b"anything")
                .to_string()
                .starts_with("bafkr4i")
        );
        assert!(ContentId::of(b"").to_string().starts_with("bafkr4i"));
    }

    #[test]
    fn binary_round_trip_and_layout() {
        let id = ContentId::of(b"some content");
        let bytes = id.to_bytes();
        assert_eq!(bytes.len(), ContentId::BINARY_LEN);
        assert_eq!(&bytes[..4], &[0x01, 0x55, 0x1e, 0x20]);
        assert_eq!(&bytes[4..], id.digest());
        assert_eq!(ContentId::from_bytes(&bytes), Ok(id));
    }

    #[test]
    fn verify_accepts_matching_and_names_both_ids_on_mismatch() {
        let id = hello();
        assert_eq!(id.verify(b"hello"), Ok(()));
        let err = id.verify(b"hellO").unwrap_err();
        assert_eq!(err.expected, id);
        assert_eq!(err.actual, ContentId::of(b"hellO"));
        let msg = err.to_string();
        assert!(msg.contains(&id.to_string()), "{msg}");
        assert!(msg.contains(&ContentId::of(b"hellO").to_string()), "{msg}");
    }

    #[test]
    fn rejects_empty() {
        assert_eq!("".parse::<ContentId>(), Err(ContentIdError::Empty));
        assert_eq!("b".parse::<ContentId>(), Err(ContentIdError::Empty));
        assert_eq!(ContentId::from_bytes(&[]), Err(ContentIdError::Empty));
    }

    #[test]
    fn rejects_other_multibases_and_says_which_is_accepted() {
        // Same CID in base32 upper ('B') and base58btc ('z').
        let upper = multibase::encode(Base::Base32Upper, hello().to_bytes());
        let err = upper.parse::<ContentId>().unwrap_err();
        assert_eq!(err, ContentIdError::UnsupportedMultibase { prefix: 'B' });
        assert!(err.to_string().contains("only base32 lower"), "{err}");
        let b58 = multibase::encode(Base::Base58Btc, hello().to_bytes());
        assert_eq!(
            b58.parse::<ContentId>(),
            Err(ContentIdError::UnsupportedMultibase { prefix: 'z' })
        );
    }

    #[test]
    fn rejects_invalid_base32() {
        let mut upper_body = HELLO_CID.to_owned();
        upper_body.replace_range(5..6, "R");
        let err = upper_body.parse::<ContentId>().unwrap_err();
        assert!(
            matches!(err, ContentIdError::InvalidBase32 { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("'R' at position 5"), "{err}");

        for bad in ["bafkr4i1", "bafkr4i=", "bafkr4ié"] {
            let err = bad.parse::<ContentId>().unwrap_err();
            assert!(
                matches!(err, ContentIdError::InvalidBase32 { .. }),
                "{bad}: {err:?}"
            );
        }
        // A base32 length that no byte string encodes to.
        let err = "ba".parse::<ContentId>().unwrap_err();
        assert!(
            matches!(err, ContentIdError::InvalidBase32 { .. }),
            "{err:?}"
        );
        // The last character carries non-zero padding bits: not canonical.
        let mut non_canonical = HELLO_CID.to_owned();
        non_canonical.pop();
        non_canonical.push('5');
        let err = non_canonical.parse::<ContentId>().unwrap_err();
        assert!(
            matches!(err, ContentIdError::InvalidBase32 { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_cidv0_as_sha2_256() {
        let v0 = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG";
        let err = v0.parse::<ContentId>().unwrap_err();
        assert_eq!(err, ContentIdError::CidV0);
        assert!(
            err.to_string()
                .contains("unsupported hash function sha2-256; only blake3 is accepted"),
            "{err}"
        );
        let mut binary_v0 = vec![0x12, 0x20];
        binary_v0.extend_from_slice(&[7; 32]);
        assert_eq!(
            ContentId::from_bytes(&binary_v0),
            Err(ContentIdError::CidV0)
        );
        // The same CIDv0 bytes written in base32 lower.
        assert_eq!(
            text_of(&binary_v0).parse::<ContentId>(),
            Err(ContentIdError::CidV0)
        );
    }

    #[test]
    fn rejects_other_cid_versions() {
        let bytes = hello_bytes_with(0, &[0x02]);
        assert_eq!(
            ContentId::from_bytes(&bytes),
            Err(ContentIdError::UnsupportedVersion { version: 2 })
        );
    }

    #[test]
    fn rejects_other_codecs_and_names_them() {
        let bytes = hello_bytes_with(1, &[0x71]);
        let err = ContentId::from_bytes(&bytes).unwrap_err();
        assert_eq!(err, ContentIdError::UnsupportedCodec { code: 0x71 });
        assert!(err.to_string().contains("0x71 (dag-cbor)"), "{err}");
        // Codec 0x0129 (dag-json) is a two-byte varint.
        let bytes = hello_bytes_with(1, &[0xa9, 0x02]);
        let err = text_of(&bytes).parse::<ContentId>().unwrap_err();
        assert_eq!(err, ContentIdError::UnsupportedCodec { code: 0x0129 });
        assert!(err.to_string().contains("0x129 (dag-json)"), "{err}");
    }

    #[test]
    fn rejects_other_hash_functions_and_names_them() {
        let bytes = hello_bytes_with(2, &[0x12]);
        let err = ContentId::from_bytes(&bytes).unwrap_err();
        assert_eq!(err, ContentIdError::UnsupportedHash { code: 0x12 });
        let msg = err.to_string();
        assert!(
            msg.contains("unsupported hash function 0x12 (sha2-256)"),
            "{msg}"
        );
        assert!(msg.contains("only blake3"), "{msg}");
        // Same through the text form.
        assert_eq!(
            text_of(&bytes).parse::<ContentId>(),
            Err(ContentIdError::UnsupportedHash { code: 0x12 })
        );
        // An unknown code is printed without a name.
        let bytes = hello_bytes_with(2, &[0x7f]);
        let err = ContentId::from_bytes(&bytes).unwrap_err();
        assert!(err.to_string().contains("function 0x7f;"), "{err}");
    }

    #[test]
    fn rejects_short_long_and_truncated_digests() {
        // Declared 16 bytes, 16 bytes follow.
        let mut short = vec![0x01, 0x55, 0x1e, 16];
        short.extend_from_slice(&[9; 16]);
        let err = ContentId::from_bytes(&short).unwrap_err();
        assert_eq!(err, ContentIdError::DigestTooShort { declared: 16 });
        assert!(err.to_string().contains("digest too short"), "{err}");
        assert!(err.to_string().contains("minimum is 32"), "{err}");

        // Declared 32 bytes, only 31 follow.
        let full = hello().to_bytes();
        let err = ContentId::from_bytes(&full[..full.len() - 1]).unwrap_err();
        assert_eq!(
            err,
            ContentIdError::DigestTruncated {
                declared: 32,
                actual: 31
            }
        );
        assert!(err.to_string().contains("digest too short"), "{err}");

        // Declared 64 bytes (a longer blake3 output), 64 bytes follow.
        let mut long = vec![0x01, 0x55, 0x1e, 64];
        long.extend_from_slice(&[9; 60]);
        assert_eq!(
            ContentId::from_bytes(&long),
            Err(ContentIdError::DigestTooLong { declared: 64 })
        );
    }

    #[test]
    fn rejects_truncated_and_invalid_varints() {
        // Input ends right after the codec's continuation byte.
        assert_eq!(
            ContentId::from_bytes(&[0x01, 0x80]),
            Err(ContentIdError::TruncatedVarint { field: "codec" })
        );
        // Input ends before the digest length.
        assert_eq!(
            ContentId::from_bytes(&[0x01, 0x55, 0x1e]),
            Err(ContentIdError::TruncatedVarint {
                field: "digest length"
            })
        );
        // Version 1 encoded non-minimally (0x81 0x00).
        let err = ContentId::from_bytes(&[0x81, 0x00, 0x55]).unwrap_err();
        assert_eq!(
            err,
            ContentIdError::InvalidVarint {
                field: "CID version"
            }
        );
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut bytes = hello().to_bytes().to_vec();
        bytes.extend_from_slice(&[0, 0]);
        assert_eq!(
            ContentId::from_bytes(&bytes),
            Err(ContentIdError::TrailingBytes { count: 2 })
        );
        assert_eq!(
            text_of(&bytes).parse::<ContentId>(),
            Err(ContentIdError::TrailingBytes { count: 2 })
        );
    }

    #[test]
    fn rejects_too_long_inputs_before_parsing() {
        let bytes = [1u8; ContentId::MAX_BINARY_LEN + 1];
        assert_eq!(
            ContentId::from_bytes(&bytes),
            Err(ContentIdError::TooLong { len: 65, max: 64 })
        );
        let text = format!("b{}", "a".repeat(10_000));
        assert_eq!(
            text.parse::<ContentId>(),
            Err(ContentIdError::TooLong {
                len: 10_001,
                max: ContentId::MAX_TEXT_LEN
            })
        );
        // The longest accepted text decodes to exactly MAX_BINARY_LEN bytes.
        assert_eq!(
            text_of(&[1u8; ContentId::MAX_BINARY_LEN]).len(),
            ContentId::MAX_TEXT_LEN
        );
    }

    proptest! {
        #[test]
        fn any_digest_round_trips(digest in any::<[u8; 32]>()) {
            let id = ContentId::from_digest(digest);
            prop_assert_eq!(id.digest(), &digest);
            prop_assert_eq!(id.to_string().parse::<ContentId>(), Ok(id));
            prop_assert_eq!(ContentId::from_bytes(&id.to_bytes()), Ok(id));
        }

        #[test]
        fn any_content_verifies_against_its_own_id(
            data in prop::collection::vec(any::<u8>(), 0..2048),
        ) {
            let id = ContentId::of(&data);
            prop_assert_eq!(id.verify(&data), Ok(()));
        }

        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,120}") {
            // Whatever the outcome, a success must print back to the same string.
            if let Ok(id) = s.parse::<ContentId>() {
                prop_assert_eq!(id.to_string(), s);
            }
        }

        #[test]
        fn arbitrary_base32_strings_never_panic(s in "b[a-z2-7]{0,110}") {
            if let Ok(id) = s.parse::<ContentId>() {
                prop_assert_eq!(id.to_string(), s);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(id) = ContentId::from_bytes(&bytes) {
                let written = id.to_bytes();
                prop_assert_eq!(written.as_slice(), bytes.as_slice());
            }
        }
    }
}
