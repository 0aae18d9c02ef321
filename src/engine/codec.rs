//! Byte-level helpers for the engine's persisted encodings: unsigned LEB128 varints up to 128
//! bits and a bounds-checked reader.
//!
//! Hand-written because the whole need is two small functions over `u128`; the common varint
//! crates stop at `u64`. Decoding never panics: every read is bounds-checked and overlong or
//! overflowing varints are rejected, so corrupt input surfaces as `Error::Corrupt`.

use super::Error;

/// The longest LEB128 encoding of a `u128`: ceil(128 / 7) bytes.
const MAX_VARINT_LEN: usize = 19;

/// Appends `value` as an unsigned LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u128) {
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// A cursor over an encoded byte string; every read fails with `Error::Corrupt` instead of
/// reading past the end.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        let (&first, rest) = self
            .bytes
            .split_first()
            .ok_or_else(|| corrupt("truncated input"))?;
        self.bytes = rest;
        Ok(first)
    }

    pub(crate) fn u64_le(&mut self) -> Result<u64, Error> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("truncated input"))?;
        self.bytes = rest;
        Ok(u64::from_le_bytes(*head))
    }

    pub(crate) fn varint(&mut self) -> Result<u128, Error> {
        let mut value: u128 = 0;
        for i in 0..MAX_VARINT_LEN {
            let byte = self.u8()?;
            let shift = 7 * u32::try_from(i).map_err(|_| corrupt("varint too long"))?;
            let payload = u128::from(byte & 0x7f);
            // The 19th byte may only carry the top 2 bits of a u128.
            if shift > 0 && payload.leading_zeros() < shift {
                return Err(corrupt("varint overflows 128 bits"));
            }
            value |= payload << shift;
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(corrupt("varint has a redundant trailing zero byte"));
                }
                return Ok(value);
            }
        }
        Err(corrupt("varint too long"))
    }

    /// Fails unless every byte was consumed: trailing garbage means the input is not what
    /// this decoder wrote.
    pub(crate) fn finish(self) -> Result<(), Error> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(corrupt("trailing bytes after the encoded state"))
        }
    }
}

pub(crate) fn corrupt(reason: &'static str) -> Error {
    Error::Corrupt { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_width() {
        let mut values = vec![0, 1, 127, 128, 300, u128::from(u64::MAX), u128::MAX];
        values.extend((0..128).map(|s| 1u128 << s));
        values.extend((1..128).map(|s| (1u128 << s) - 1));
        for v in values {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert!(buf.len() <= MAX_VARINT_LEN);
            let mut r = Reader::new(&buf);
            assert_eq!(r.varint(), Ok(v), "value {v}");
            assert_eq!(r.finish(), Ok(()));
        }
    }

    #[test]
    fn malformed_varints_are_errors() {
        // Truncated: continuation bit set on the last byte.
        assert!(Reader::new(&[0x80]).varint().is_err());
        // Overlong zero.
        assert!(Reader::new(&[0x80, 0x00]).varint().is_err());
        // 20 bytes.
        assert!(Reader::new(&[0xff; 20]).varint().is_err());
        // 19 bytes whose last one carries more than 2 bits: past u128::MAX.
        let mut too_big = vec![0xff; 18];
        too_big.push(0x04);
        assert!(Reader::new(&too_big).varint().is_err());
        // Empty input.
        assert!(Reader::new(&[]).varint().is_err());
        assert!(Reader::new(&[1, 2, 3]).u64_le().is_err());
    }
}
