//! `Content-Encoding` undone, with the decompressed size bounded: a small body cannot become a
//! large one in memory (a compression bomb stops at `max` bytes).

use std::io::Read;

use bytes::Bytes;

/// Why a body was not decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// An encoding other than gzip, deflate, br and identity.
    Unsupported,
    /// More than `max` bytes once decoded.
    TooLarge,
    /// Not valid in its encoding.
    Corrupt,
}

/// `body` decoded from `encoding` (a `Content-Encoding` value in lowercase, possibly a list);
/// `None` when it is not encoded (`identity` or empty).
pub(crate) fn decode(encoding: &str, body: &[u8], max: usize) -> Result<Option<Bytes>, Refused> {
    let codings: Vec<&str> = encoding
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && *c != "identity")
        .collect();
    if codings.is_empty() {
        return Ok(None);
    }
    let mut data = Bytes::copy_from_slice(body);
    // Codings are listed in the order they were applied: undo them from the last.
    for coding in codings.iter().rev() {
        data = match *coding {
            "gzip" | "x-gzip" => bounded(flate2::read::MultiGzDecoder::new(&data[..]), max)?,
            // HTTP's `deflate` is the zlib format; some senders send raw deflate instead.
            "deflate" => bounded(flate2::read::ZlibDecoder::new(&data[..]), max)
                .or_else(|_| bounded(flate2::read::DeflateDecoder::new(&data[..]), max))?,
            "br" => bounded(brotli_decompressor::Decompressor::new(&data[..], 4096), max)?,
            _ => return Err(Refused::Unsupported),
        };
    }
    Ok(Some(data))
}

/// Everything `reader` gives, or `TooLarge` past `max` bytes.
fn bounded(reader: impl Read, max: usize) -> Result<Bytes, Refused> {
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|_| Refused::Corrupt)?;
    if out.len() > max {
        return Err(Refused::TooLarge);
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    }

    #[test]
    fn gzip_deflate_and_br_are_undone() {
        let data = b"hello, encoded world".repeat(10);
        assert_eq!(
            decode("gzip", &gzip(&data), 1000),
            Ok(Some(data.clone().into()))
        );
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).expect("write");
        let z = z.finish().expect("finish");
        assert_eq!(decode("deflate", &z, 1000), Ok(Some(data.clone().into())));
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&data).expect("write");
        let raw = raw.finish().expect("finish");
        assert_eq!(decode("deflate", &raw, 1000), Ok(Some(data.clone().into())));
        // `br` of "hello" as brotli's reference encoder writes it (quality 11).
        let br = [0x0b, 0x02, 0x80, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x03];
        assert_eq!(
            decode("br", &br, 1000),
            Ok(Some(Bytes::from_static(b"hello")))
        );
        assert_eq!(decode("identity", b"x", 10), Ok(None));
        assert_eq!(
            decode("gzip, identity", &gzip(b"x"), 10),
            Ok(Some(Bytes::from_static(b"x")))
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_the_unknown_is_refused() {
        let bomb = gzip(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 20_000);
        assert_eq!(decode("gzip", &bomb, 1 << 20), Err(Refused::TooLarge));
        assert_eq!(decode("zstd", b"x", 10), Err(Refused::Unsupported));
        assert_eq!(decode("gzip", b"not gzip", 10), Err(Refused::Corrupt));
    }
}
