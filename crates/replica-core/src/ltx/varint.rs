//! Unsigned LEB128 varints (Go `binary.Uvarint`), used only by the page index.

use std::io::Read;

use super::LtxError;

/// A u64 never needs more than 10 groups of 7 bits.
pub(crate) const MAX_VARINT_LEN: usize = 10;

pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads one varint, appending its raw bytes to `raw` (they are part of the
/// FileChecksum and of IndexSize).
pub(crate) fn read_uvarint<R: Read>(r: &mut R, raw: &mut Vec<u8>) -> Result<u64, LtxError> {
    let mut v: u64 = 0;
    for i in 0..MAX_VARINT_LEN {
        let mut b = [0u8; 1];
        r.read_exact(&mut b)?;
        raw.push(b[0]);
        let group = u64::from(b[0] & 0x7f);
        // The tenth byte may only contribute the single remaining bit.
        if i == MAX_VARINT_LEN - 1 && b[0] > 1 {
            return Err(LtxError::InvalidIndex("varint overflows u64".into()));
        }
        v |= group << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(LtxError::InvalidIndex("varint longer than 10 bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_uvarint(&mut out, v);
        out
    }

    #[test]
    fn spec_examples() {
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(100), [0x64]);
        assert_eq!(enc(271), [0x8f, 0x02]);
        assert_eq!(enc(1287), [0x87, 0x0a]);
    }

    #[test]
    fn round_trip() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let b = enc(v);
            let mut raw = Vec::new();
            assert_eq!(read_uvarint(&mut &b[..], &mut raw).unwrap(), v);
            assert_eq!(raw, b);
        }
        assert_eq!(enc(u64::MAX).len(), MAX_VARINT_LEN);
    }

    #[test]
    fn rejects_overflow_and_truncation() {
        let mut raw = Vec::new();
        let too_long = [0xffu8; 11];
        assert!(read_uvarint(&mut &too_long[..], &mut raw).is_err());
        let mut overflow = vec![0xffu8; 9];
        overflow.push(0x02);
        assert!(read_uvarint(&mut &overflow[..], &mut raw).is_err());
        assert!(matches!(
            read_uvarint(&mut &[0x80u8][..], &mut raw),
            Err(LtxError::Truncated)
        ));
    }
}
