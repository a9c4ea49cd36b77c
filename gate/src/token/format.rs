//! The rider code's binary layout (format version 1) and its Base45 text form.
//!
//! This module only parses and lays out bytes; it checks no signature and reads no clock.
//! Every length is fixed, so nothing here allocates a size read from untrusted input.
//! The byte-by-byte layout is documented in `docs/qr-token.md`; keep the two in step.

use crate::clock::UnixMillis;

use super::Reason;

/// The only format version this build understands.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes of the credential body: what the issuer's signature covers.
pub const CREDENTIAL_BODY_LEN: usize = 1 + 1 + 2 + 4 + 8 + 8 + 32;
/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Bytes of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes of a whole credential: body and issuer signature.
pub const CREDENTIAL_LEN: usize = CREDENTIAL_BODY_LEN + SIGNATURE_LEN;
/// Bytes of the code body: what the device's signature covers.
pub const CODE_BODY_LEN: usize = CREDENTIAL_LEN + 4 + 8;
/// Bytes of a whole version-1 code.
pub const CODE_LEN: usize = CODE_BODY_LEN + SIGNATURE_LEN;
/// Characters of a version-1 code's Base45 text: 3 for every 2 bytes.
pub const CODE_TEXT_LEN: usize = CODE_LEN / 2 * 3;
/// Characters a version 10 QR code holds at error correction M in alphanumeric mode.
pub const QR_V10_M_ALPHANUMERIC_CHARS: usize = 311;
// The format's reason to be this small: it must fit that QR code.
const _: () = assert!(CODE_TEXT_LEN <= QR_V10_M_ALPHANUMERIC_CHARS);

/// The longest text the decoder looks at. Anything longer is refused before decoding, so
/// a hostile scanner cannot make the engine decode megabytes.
pub const TEXT_LEN_MAX: usize = 400;

/// The fields of a credential, signed by the payment provider's issuer key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential {
    /// Free bits for the provider (for example a concession fare); carried, not checked.
    pub flags: u8,
    /// The payment provider that issued the credential and pays for the rider.
    pub provider_id: u16,
    /// Which of the provider's issuer keys signed it (see [`super::key_id_of`]).
    pub issuer_key_id: u32,
    /// The rider's account in the ledger.
    pub account_id: u64,
    /// The credential is valid strictly before this time.
    pub expires_at: UnixMillis,
    /// The phone's device key, which signs each code.
    pub device_public_key: [u8; PUBLIC_KEY_LEN],
}

/// The fields a phone adds each time it shows a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeFields {
    /// Counts up on the device for every code it makes.
    pub sequence: u32,
    /// When the phone made the code.
    pub generated_at: UnixMillis,
}

/// A parsed code: its fields, and views of the bytes each signature covers.
#[derive(Debug, Clone, Copy)]
pub struct ParsedCode<'a> {
    /// The credential's fields.
    pub credential: Credential,
    /// The code's own fields.
    pub code: CodeFields,
    /// The whole credential (body and issuer signature): the cache key is its hash.
    pub credential_bytes: &'a [u8; CREDENTIAL_LEN],
    /// The bytes the issuer signed.
    pub credential_body: &'a [u8],
    /// The issuer's signature.
    pub issuer_signature: &'a [u8],
    /// The bytes the device signed.
    pub code_body: &'a [u8],
    /// The device's signature.
    pub device_signature: &'a [u8],
}

/// The Base45 alphabet (RFC 9285): the QR code alphanumeric characters.
pub const BASE45_ALPHABET: &[u8; 45] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";

/// Each byte's value as a Base45 digit, or [`NOT_BASE45`] for a byte outside the alphabet.
const BASE45_VALUES: [u8; 256] = {
    let mut values = [NOT_BASE45; 256];
    let mut digit = 0;
    while digit < BASE45_ALPHABET.len() {
        values[BASE45_ALPHABET[digit] as usize] = digit as u8;
        digit += 1;
    }
    values
};
const NOT_BASE45: u8 = 0xFF;

/// Decodes the Base45 text form (RFC 9285) into the code's bytes. Every scan does this,
/// so it is a table look-up per character: the `base45` crate's decoder called a
/// function per character and cost 2.6 us of a tap's 34 us verification
/// (`docs/PERFORMANCE.md`), and it truncated a final pair above 255 instead of refusing
/// it.
pub fn decode_text(text: &str) -> Result<Vec<u8>, Reason> {
    if text.len() > TEXT_LEN_MAX {
        return Err(Reason::TooLong);
    }
    let characters = text.as_bytes();
    // Three characters encode two bytes, a final two one byte; one left over encodes
    // nothing.
    if characters.len() % 3 == 1 {
        return Err(Reason::BadEncoding);
    }
    let mut bytes = Vec::with_capacity(characters.len() / 3 * 2 + 1);
    for group in characters.chunks(3) {
        let mut value = 0u32;
        for &character in group.iter().rev() {
            let digit = BASE45_VALUES[usize::from(character)];
            if digit == NOT_BASE45 {
                return Err(Reason::BadEncoding);
            }
            value = value * 45 + u32::from(digit);
        }
        match group.len() {
            3 if value <= 0xFFFF => bytes.extend_from_slice(&(value as u16).to_be_bytes()),
            2 if value <= 0xFF => bytes.push(value as u8),
            _ => return Err(Reason::BadEncoding),
        }
    }
    Ok(bytes)
}

/// Encodes a code's bytes as Base45 text (RFC 9285): each two bytes as three characters,
/// least significant first, and a last single byte as two.
pub fn encode_text(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len().div_ceil(2) * 3);
    for pair in bytes.chunks(2) {
        let (mut value, characters) = match *pair {
            [high, low] => (u32::from(u16::from_be_bytes([high, low])), 3),
            _ => (u32::from(pair[0]), 2),
        };
        for _ in 0..characters {
            text.push(char::from(BASE45_ALPHABET[(value % 45) as usize]));
            value /= 45;
        }
    }
    text
}

/// Parses a code's bytes. The checks run in the documented order: empty, version, length.
pub fn parse(bytes: &[u8]) -> Result<ParsedCode<'_>, Reason> {
    let Some(&version) = bytes.first() else {
        return Err(Reason::Truncated);
    };
    if version != FORMAT_VERSION {
        return Err(Reason::UnsupportedVersion);
    }
    if bytes.len() < CODE_LEN {
        return Err(Reason::Truncated);
    }
    if bytes.len() > CODE_LEN {
        return Err(Reason::TrailingBytes);
    }
    let credential_bytes: &[u8; CREDENTIAL_LEN] = bytes[..CREDENTIAL_LEN]
        .try_into()
        .map_err(|_| Reason::Truncated)?;
    let mut reader = Reader { bytes, offset: 1 };
    let flags = reader.u8();
    let provider_id = reader.u16();
    let issuer_key_id = reader.u32();
    let account_id = reader.u64();
    let expires_at = UnixMillis(reader.u64());
    let device_public_key = reader.array::<PUBLIC_KEY_LEN>();
    // The layout adds up: every field read, none twice (a fixed cost, checked in every
    // build; the input's length was checked above, so no input can fail it).
    assert_eq!(reader.offset, CREDENTIAL_BODY_LEN, "credential layout");
    reader.offset = CREDENTIAL_LEN;
    let sequence = reader.u32();
    let generated_at = UnixMillis(reader.u64());
    assert_eq!(reader.offset, CODE_BODY_LEN, "code layout");
    Ok(ParsedCode {
        credential: Credential {
            flags,
            provider_id,
            issuer_key_id,
            account_id,
            expires_at,
            device_public_key,
        },
        code: CodeFields {
            sequence,
            generated_at,
        },
        credential_bytes,
        credential_body: &bytes[..CREDENTIAL_BODY_LEN],
        issuer_signature: &bytes[CREDENTIAL_BODY_LEN..CREDENTIAL_LEN],
        code_body: &bytes[..CODE_BODY_LEN],
        device_signature: &bytes[CODE_BODY_LEN..CODE_LEN],
    })
}

/// A code's fingerprint: the first 16 bytes of the SHA-256 of its bytes.
pub fn fingerprint(bytes: &[u8]) -> [u8; 16] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut fingerprint = [0u8; 16];
    fingerprint.copy_from_slice(&digest.as_ref()[..16]);
    fingerprint
}

/// Lays out a credential body (the bytes the issuer signs).
pub fn credential_body(credential: &Credential) -> [u8; CREDENTIAL_BODY_LEN] {
    let mut body = [0u8; CREDENTIAL_BODY_LEN];
    let mut writer = Writer {
        bytes: &mut body,
        offset: 0,
    };
    writer.put(&[FORMAT_VERSION, credential.flags]);
    writer.put(&credential.provider_id.to_be_bytes());
    writer.put(&credential.issuer_key_id.to_be_bytes());
    writer.put(&credential.account_id.to_be_bytes());
    writer.put(&credential.expires_at.0.to_be_bytes());
    writer.put(&credential.device_public_key);
    assert_eq!(writer.offset, CREDENTIAL_BODY_LEN, "credential layout");
    body
}

/// Lays out a code body (the bytes the device signs) from a signed credential.
pub fn code_body(credential: &[u8; CREDENTIAL_LEN], code: &CodeFields) -> [u8; CODE_BODY_LEN] {
    let mut body = [0u8; CODE_BODY_LEN];
    let mut writer = Writer {
        bytes: &mut body,
        offset: 0,
    };
    writer.put(credential);
    writer.put(&code.sequence.to_be_bytes());
    writer.put(&code.generated_at.0.to_be_bytes());
    assert_eq!(writer.offset, CODE_BODY_LEN, "code layout");
    body
}

/// Reads big-endian fields from a slice whose length the caller has already checked.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.offset..self.offset + N]);
        self.offset += N;
        out
    }
    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.array())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.array())
    }
}

struct Writer<'a> {
    bytes: &'a mut [u8],
    offset: usize,
}

impl Writer<'_> {
    fn put(&mut self, field: &[u8]) {
        self.bytes[self.offset..self.offset + field.len()].copy_from_slice(field);
        self.offset += field.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_widths_fit_a_version_10_m_qr_code() {
        assert_eq!(CREDENTIAL_LEN, 120);
        assert_eq!(CODE_LEN, 196);
        assert_eq!(CODE_TEXT_LEN, 294);
    }

    #[test]
    fn short_long_and_foreign_inputs_get_their_reasons() {
        assert_eq!(parse(&[]).unwrap_err(), Reason::Truncated);
        assert_eq!(
            parse(&[2; CODE_LEN]).unwrap_err(),
            Reason::UnsupportedVersion
        );
        assert_eq!(parse(&[1; CODE_LEN - 1]).unwrap_err(), Reason::Truncated);
        assert_eq!(
            parse(&[1; CODE_LEN + 1]).unwrap_err(),
            Reason::TrailingBytes
        );
        assert_eq!(decode_text("ZZZ").unwrap_err(), Reason::BadEncoding);
        assert_eq!(decode_text("ZZ").unwrap_err(), Reason::BadEncoding);
        assert_eq!(decode_text("U5").unwrap(), vec![255]);
        assert_eq!(decode_text("V5").unwrap_err(), Reason::BadEncoding);
        assert_eq!(
            decode_text(&"0".repeat(TEXT_LEN_MAX + 1)).unwrap_err(),
            Reason::TooLong
        );
    }

    /// The examples of RFC 9285, section 4.3 and 4.4, both ways.
    #[test]
    fn base45_matches_the_rfc_examples() {
        for (bytes, text) in [
            (&b"AB"[..], "BB8"),
            (b"Hello!!", "%69 VD92EX0"),
            (b"base-45", "UJCLQE7W581"),
            (b"ietf!", "QED8WEX0"),
            (b"", ""),
        ] {
            assert_eq!(encode_text(bytes), text);
            assert_eq!(decode_text(text).unwrap(), bytes, "{text}");
        }
        // "GGW" is 16 + 16 * 45 + 32 * 45^2 = 65,536: one past two bytes.
        assert_eq!(decode_text("GGW").unwrap_err(), Reason::BadEncoding);
        assert_eq!(decode_text("FGW").unwrap(), vec![0xFF, 0xFF]);
        // Outside the alphabet (lower case letters are not in it), and a lone character.
        assert_eq!(decode_text("bb8").unwrap_err(), Reason::BadEncoding);
        assert_eq!(decode_text("BB8B").unwrap_err(), Reason::BadEncoding);
        assert_eq!(decode_text("B\u{e9}").unwrap_err(), Reason::BadEncoding);
    }

    /// Any bytes come back from their text, which uses only the alphabet.
    #[test]
    fn base45_round_trips_any_bytes() {
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        // The longest that fits in TEXT_LEN_MAX characters: 266 bytes, 399 characters.
        for length in 0..=266 {
            let bytes: Vec<u8> = (0..length)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let text = encode_text(&bytes);
            assert_eq!(text.len(), length / 2 * 3 + length % 2 * 2);
            assert!(text.bytes().all(|c| BASE45_ALPHABET.contains(&c)));
            assert_eq!(decode_text(&text).unwrap(), bytes);
        }
    }

    #[test]
    fn fields_round_trip_through_the_layout() {
        let credential = Credential {
            flags: 0x81,
            provider_id: 0x0102,
            issuer_key_id: 0x0304_0506,
            account_id: 0x0708_090a_0b0c_0d0e,
            expires_at: UnixMillis(0x1112_1314_1516_1718),
            device_public_key: [0x42; 32],
        };
        let mut signed = [0u8; CREDENTIAL_LEN];
        signed[..CREDENTIAL_BODY_LEN].copy_from_slice(&credential_body(&credential));
        let fields = CodeFields {
            sequence: 0x2122_2324,
            generated_at: UnixMillis(77),
        };
        let mut code = code_body(&signed, &fields).to_vec();
        code.extend_from_slice(&[0u8; SIGNATURE_LEN]);
        let parsed = parse(&code).unwrap();
        assert_eq!(parsed.credential, credential);
        assert_eq!(parsed.code, fields);
        assert_eq!(&code[..4], &[1, 0x81, 0x01, 0x02]);
    }
}
