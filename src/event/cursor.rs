//! Reading a stored record's envelope in place, field by field.
//!
//! A replay reads a million envelopes, and bincode's serde decoder spent
//! about a sixth of the fold's time on them (docs/PERFORMANCE.md): a visitor
//! call per field, and a UTF-8 check of every string, the cause's included,
//! which no fold reads. [`Cursor`] reads bincode's standard encoding (2.0.1,
//! varint integers) directly: the fields a fold reads are checked as serde
//! would check them, the cause is stepped over by its lengths.
//!
//! The serde decoder stays the reference: a property test in `event` holds
//! the two equal on every event it makes, and on every cut or changed byte
//! of their records, both failing where one does.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::DecodeError;

/// A position in a record's bytes. Every read either moves past a whole
/// value or fails naming the field it was reading.
pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
}

/// The largest `u64` that bincode writes in one byte; 251, 252 and 253
/// announce a `u16`, `u32` and `u64` that follow (little-endian).
const SINGLE_BYTE_MAX: u8 = 250;

impl<'a> Cursor<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { bytes }
    }

    /// The bytes not read yet.
    pub(super) fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    fn take(&mut self, len: usize, field: &str) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < len {
            return Err(DecodeError::Bincode(format!(
                "{field}: the record ends {} bytes into a value of {len}",
                self.bytes.len()
            )));
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    fn fixed<const N: usize>(&mut self, field: &str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, field)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    /// A varint of at most `widest` bytes after its marker (2, 4 or 8), as
    /// bincode's decoder of that integer type accepts it.
    fn varint(&mut self, widest: usize, field: &str) -> Result<u64, DecodeError> {
        let marker = self.fixed::<1>(field)?[0];
        let width = match marker {
            0..=SINGLE_BYTE_MAX => return Ok(u64::from(marker)),
            251 => 2,
            252 => 4,
            253 => 8,
            _ => 16,
        };
        if width > widest {
            return Err(DecodeError::Bincode(format!(
                "{field}: varint marker {marker} is too wide for the field"
            )));
        }
        let mut le = [0u8; 8];
        le[..width].copy_from_slice(self.take(width, field)?);
        Ok(u64::from_le_bytes(le))
    }

    pub(super) fn u64(&mut self, field: &str) -> Result<u64, DecodeError> {
        self.varint(8, field)
    }

    pub(super) fn u32(&mut self, field: &str) -> Result<u32, DecodeError> {
        Ok(u32::try_from(self.varint(4, field)?).expect("four bytes fit a u32"))
    }

    pub(super) fn u16(&mut self, field: &str) -> Result<u16, DecodeError> {
        Ok(u16::try_from(self.varint(2, field)?).expect("two bytes fit a u16"))
    }

    /// An `i64`, zigzag-encoded as bincode's varint configuration writes it.
    pub(super) fn i64(&mut self, field: &str) -> Result<i64, DecodeError> {
        let zigzag = self.u64(field)?;
        Ok(((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64))
    }

    /// A length-prefixed run of bytes (a `&[u8]` or a string's bytes).
    pub(super) fn bytes(&mut self, field: &str) -> Result<&'a [u8], DecodeError> {
        let len = self.u64(field)?;
        let len = usize::try_from(len).map_err(|_| {
            DecodeError::Bincode(format!("{field}: length {len} does not fit in memory"))
        })?;
        self.take(len, field)
    }

    /// A string, checked as UTF-8 as serde's decoder checks it.
    pub(super) fn str(&mut self, field: &str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes(field)?)
            .map_err(|error| DecodeError::Bincode(format!("{field}: {error}")))
    }

    /// A UUID as serde writes one to a binary format: 16 length-prefixed bytes.
    pub(super) fn uuid(&mut self, field: &str) -> Result<Uuid, DecodeError> {
        let bytes = self.bytes(field)?;
        Uuid::from_slice(bytes).map_err(|_| {
            DecodeError::Bincode(format!("{field}: a UUID has 16 bytes, not {}", bytes.len()))
        })
    }

    /// A time as `chrono::serde::ts_microseconds` writes it.
    pub(super) fn time_micros(&mut self, field: &str) -> Result<DateTime<Utc>, DecodeError> {
        let micros = self.i64(field)?;
        DateTime::from_timestamp_micros(micros).ok_or_else(|| {
            DecodeError::Bincode(format!("{field}: {micros} µs is out of chrono's range"))
        })
    }

    /// An `Option`'s tag: whether a value follows.
    pub(super) fn option(&mut self, field: &str) -> Result<bool, DecodeError> {
        match self.fixed::<1>(field)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::Bincode(format!(
                "{field}: option tag {other} is neither 0 nor 1"
            ))),
        }
    }

    /// Steps over a string whose text nobody reads. Its bytes are not
    /// checked as UTF-8; the record's checksum covers them.
    pub(super) fn skip_str(&mut self, field: &str) -> Result<(), DecodeError> {
        self.bytes(field).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded<T: serde::Serialize>(value: &T) -> Vec<u8> {
        crate::event::to_bincode(value)
    }

    #[test]
    fn integers_of_every_width_read_as_bincode_wrote_them() {
        for value in [0u64, 1, 250, 251, 65_535, 65_536, u32::MAX as u64, u64::MAX] {
            let bytes = encoded(&value);
            let mut cursor = Cursor::new(&bytes);
            assert_eq!(cursor.u64("n").unwrap(), value);
            assert!(cursor.rest().is_empty());
        }
        for value in [0i64, -1, 1, i64::MIN, i64::MAX, 1_700_000_000_000_000] {
            let bytes = encoded(&value);
            assert_eq!(Cursor::new(&bytes).i64("n").unwrap(), value);
        }
        for value in [0u16, 250, 251, u16::MAX] {
            assert_eq!(Cursor::new(&encoded(&value)).u16("n").unwrap(), value);
        }
        // A u16 field refuses a wider varint, as bincode's u16 decoder does.
        let wide = encoded(&70_000u64);
        let error = Cursor::new(&wide).u16("schema").unwrap_err();
        assert!(error.to_string().contains("schema"), "{error}");
    }

    #[test]
    fn a_cut_value_names_its_field() {
        let bytes = encoded(&"stream name");
        let error = Cursor::new(&bytes[..5]).str("stream").unwrap_err();
        assert_eq!(
            error.to_string(),
            "bincode: stream: the record ends 4 bytes into a value of 11"
        );
        let error = Cursor::new(&[]).u64("seq").unwrap_err();
        assert!(error.to_string().contains("seq"), "{error}");
    }

    #[test]
    fn strings_are_checked_unless_skipped() {
        let bytes = [2u8, 0xff, 0xfe];
        assert!(Cursor::new(&bytes).str("actor").is_err());
        let mut cursor = Cursor::new(&bytes);
        cursor.skip_str("reason").unwrap();
        assert!(cursor.rest().is_empty());
    }
}
