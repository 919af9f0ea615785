//! Checksums recorded for every state file (CRC32C, hardware accelerated).

/// CRC32C of a byte slice.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Extends a running CRC32C with more bytes (for streaming reads).
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

#[cfg(test)]
mod tests {
    #[test]
    fn append_equals_whole() {
        let whole = super::crc32c(b"hello world");
        let part = super::crc32c_append(super::crc32c(b"hello "), b"world");
        assert_eq!(whole, part);
        assert_ne!(whole, super::crc32c(b"hello worle"));
    }
}
