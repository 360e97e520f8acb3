//! Keys as ordered byte strings: a key is a tuple of strings and numbers, encoded so that the
//! byte order of two keys is the order of their tuples, and a tuple's prefix (say, a tenant and
//! a user) is a byte prefix of every key that starts with it.
//!
//! A string is its bytes with each 0x00 written as 0x00 0xFF, then 0x00 0x00 as its end, so no
//! string's encoding is a prefix of another's; a number is 8 bytes, big-endian.

use crate::StoreError;

/// A key being built, element by element.
#[derive(Debug, Default, Clone)]
pub(super) struct Key(Vec<u8>);

impl Key {
    pub(super) fn new() -> Self {
        Self(Vec::with_capacity(48))
    }

    pub(super) fn str(mut self, s: &str) -> Self {
        for &b in s.as_bytes() {
            self.0.push(b);
            if b == 0 {
                self.0.push(0xFF);
            }
        }
        self.0.extend_from_slice(&[0, 0]);
        self
    }

    pub(super) fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Reads a key's elements back, in order.
pub(super) struct KeyReader<'k> {
    rest: &'k [u8],
}

impl<'k> KeyReader<'k> {
    pub(super) fn new(key: &'k [u8]) -> Self {
        Self { rest: key }
    }

    /// Skips `prefix` (the bytes a [`Key`] of the leading elements makes).
    pub(super) fn skip(mut self, prefix: &[u8]) -> Result<Self, StoreError> {
        self.rest = self
            .rest
            .strip_prefix(prefix)
            .ok_or_else(|| corrupt("a key outside its range"))?;
        Ok(self)
    }

    pub(super) fn str(&mut self) -> Result<String, StoreError> {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            match (self.rest.get(i), self.rest.get(i + 1)) {
                (Some(0), Some(0)) => break,
                (Some(0), Some(0xFF)) => {
                    out.push(0);
                    i += 2;
                }
                (Some(&b), _) if b != 0 => {
                    out.push(b);
                    i += 1;
                }
                _ => return Err(corrupt("a string element without its end")),
            }
        }
        self.rest = &self.rest[i + 2..];
        String::from_utf8(out).map_err(|_| corrupt("a string element that is not UTF-8"))
    }

    pub(super) fn u64(&mut self) -> Result<u64, StoreError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("a number element cut short"))?;
        self.rest = rest;
        Ok(u64::from_be_bytes(*head))
    }
}

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("the lsm database holds {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str, n: u64) -> Vec<u8> {
        Key::new().str(s).u64(n).into_bytes()
    }

    #[test]
    fn byte_order_is_tuple_order() {
        let tuples = [
            ("", 5),
            ("a", 0),
            ("a", u64::MAX),
            ("a\0", 0),
            ("a\0b", 1),
            ("ab", 0),
            ("b", 1),
            ("b", 256),
        ];
        let keys: Vec<Vec<u8>> = tuples.iter().map(|(s, n)| key(s, *n)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert!(key("bob", 0) < key("bobby", 0));
    }

    #[test]
    fn a_prefix_is_a_tuple_prefix_only() {
        let bob = Key::new().str("t").str("bob").into_bytes();
        assert!(key("bob", 1).starts_with(&Key::new().str("bob").into_bytes()));
        assert!(
            !Key::new()
                .str("t")
                .str("bobby")
                .into_bytes()
                .starts_with(&bob)
        );
    }

    #[test]
    fn elements_read_back() {
        let bytes = Key::new().str("t\0x").u64(42).str("").into_bytes();
        let mut r = KeyReader::new(&bytes);
        assert_eq!(r.str().unwrap(), "t\0x");
        assert_eq!(r.u64().unwrap(), 42);
        assert_eq!(r.str().unwrap(), "");
        let prefix = Key::new().str("t\0x").into_bytes();
        let mut r = KeyReader::new(&bytes).skip(&prefix).unwrap();
        assert_eq!(r.u64().unwrap(), 42);
        assert!(KeyReader::new(b"\x01\x00").str().is_err());
    }
}
