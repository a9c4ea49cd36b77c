//! Lowercase hex text for bytes: code fingerprints, token hashes, seeds. Small enough to
//! keep here rather than take a dependency for.

/// Why hex text does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HexError {
    /// The text is not exactly twice as long as the bytes wanted (its length in bytes).
    Length(usize),
    /// The pair of digits starting at this position is not hex.
    Digit(usize),
}

/// The bytes as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Exactly 64 hex digits (either case) as 32 bytes.
pub fn decode_32(text: &str) -> Result<[u8; 32], HexError> {
    decode_array(text)
}

/// Exactly `2 * N` hex digits (either case) as `N` bytes.
pub fn decode_array<const N: usize>(text: &str) -> Result<[u8; N], HexError> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return Err(HexError::Length(digits.len()));
    }
    let mut out = [0u8; N];
    for (index, byte) in out.iter_mut().enumerate() {
        let position = index * 2;
        let pair = &digits[position..position + 2];
        // Checked byte by byte: `from_str_radix` alone would take a sign ("+f").
        if !pair.iter().all(u8::is_ascii_hexdigit) {
            return Err(HexError::Digit(position));
        }
        let pair = std::str::from_utf8(pair).map_err(|_| HexError::Digit(position))?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| HexError::Digit(position))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_bad_text_is_an_error_not_a_panic() {
        let bytes: [u8; 32] = std::array::from_fn(|index| (index * 37) as u8);
        let text = encode(&bytes);
        assert_eq!(text.len(), 64);
        assert_eq!(decode_32(&text), Ok(bytes));
        assert_eq!(decode_32(&text.to_uppercase()), Ok(bytes));
        assert_eq!(decode_32("abc"), Err(HexError::Length(3)));
        let mut signed = text.clone();
        signed.replace_range(4..6, "+f");
        assert_eq!(decode_32(&signed), Err(HexError::Digit(4)));
        // 62 ASCII digits and a two-byte character: 64 bytes, no character boundary at 63.
        let wide = format!("{}é", &text[..62]);
        assert_eq!(wide.len(), 64);
        assert_eq!(decode_32(&wide), Err(HexError::Digit(62)));
        let signature: [u8; 64] = std::array::from_fn(|index| index as u8);
        assert_eq!(decode_array::<64>(&encode(&signature)), Ok(signature));
        assert_eq!(decode_array::<16>(&text), Err(HexError::Length(64)));
    }
}
