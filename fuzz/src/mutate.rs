//! A seeded RNG and the mutations: byte-level (bit flips, interesting integers, insertions,
//! deletions, chunk repetition up to thousands of times for deep nesting, splices, decimal
//! numbers replaced by extreme ones) and structure-aware wrappers that keep the container valid
//! so that the mutation reaches the parser behind it: zip entries re-packed (their CRC-32s
//! recomputed), a safetensors header with its length prefix fixed, PNG chunk CRCs fixed.

use std::io::{Cursor, Read, Write};

/// splitmix64: small, fast, and the same sequence for a seed on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Small values much more often than large ones: `0..2^k` for a random `k < bits`.
    pub fn skewed(&mut self, bits: u32) -> usize {
        let k = self.below(bits as usize) as u32;
        self.below(1 << k)
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// Integers that break size arithmetic: zero, one, sign boundaries, powers of two, maxima.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 62,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// Decimal numbers that break configs and text protocols.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1e308",
    "-1e308",
    "4294967296",
    "18446744073709551615",
    "99999999999999999999999",
    "100000",
    "0.0000001",
    "NaN",
];

/// The most an input may grow to.
pub const MAX_LEN: usize = 4 << 20;

/// One to eight stacked byte-level mutations of `base`; `other` is another corpus input
/// (for splices).
pub fn bytes(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.skewed(4) {
        one(rng, &mut v, other);
        v.truncate(MAX_LEN);
    }
    v
}

fn one(rng: &mut Rng, v: &mut Vec<u8>, other: &[u8]) {
    let len = v.len();
    let pos = rng.below(len + 1);
    match rng.below(11) {
        0 if len > 0 => v[pos.min(len - 1)] ^= 1 << rng.below(8),
        1 if len > 0 => v[pos.min(len - 1)] = rng.next() as u8,
        2 => {
            let x = INTERESTING[rng.below(INTERESTING.len())];
            let w = [1, 2, 4, 8][rng.below(4)];
            let b = if rng.chance(80) {
                x.to_le_bytes()
            } else {
                x.to_be_bytes()
            };
            let b = if rng.chance(80) { &b[..w] } else { &b[8 - w..] };
            let end = (pos + w).min(len);
            v.splice(pos..end, b.iter().copied());
        }
        3 if len > 0 => {
            let i = pos.min(len - 1);
            v[i] = v[i].wrapping_add((rng.below(33) as u8).wrapping_sub(16));
        }
        4 if len > 0 => {
            let n = 1 + rng.skewed(12).min(len - pos.min(len - 1) - 1);
            let start = pos.min(len - 1);
            v.drain(start..(start + n).min(len));
        }
        5 => {
            let n = 1 + rng.skewed(6);
            let ins: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            v.splice(pos..pos, ins);
        }
        6 if len > 0 => {
            // Repeat a chunk many times: deep nesting, long lists, huge counts.
            let start = pos.min(len - 1);
            let n = 1 + rng.skewed(5).min(len - start - 1);
            let chunk = v[start..start + n].to_vec();
            let times = 1 + rng.skewed(17);
            let rep: Vec<u8> = chunk
                .iter()
                .copied()
                .cycle()
                .take((n * times).min(MAX_LEN))
                .collect();
            v.splice(start..start, rep);
        }
        7 if len > 1 => {
            let (a, b) = (rng.below(len), rng.below(len));
            let n = 1 + rng.skewed(8).min(len - a.max(b) - 1);
            let chunk = v[a..a + n].to_vec();
            v[b..b + n].copy_from_slice(&chunk);
        }
        8 if !other.is_empty() => {
            let cut = rng.below(other.len());
            v.truncate(pos);
            v.extend_from_slice(&other[cut..]);
        }
        9 => replace_number(rng, v),
        10 => v.truncate(pos),
        _ => v.push(rng.next() as u8),
    }
}

/// Replaces a run of ASCII digits with an extreme decimal number (or inserts one).
fn replace_number(rng: &mut Rng, v: &mut Vec<u8>) {
    let runs: Vec<(usize, usize)> = {
        let mut out = Vec::new();
        let mut i = 0;
        while i < v.len() {
            if v[i].is_ascii_digit() {
                let s = i;
                while i < v.len() && (v[i].is_ascii_digit() || v[i] == b'.') {
                    i += 1;
                }
                out.push((s, i));
            }
            i += 1;
        }
        out
    };
    let num = NUMBERS[rng.below(NUMBERS.len())].as_bytes();
    match runs.get(rng.below(runs.len().max(1))) {
        Some(&(s, e)) if !runs.is_empty() => {
            v.splice(s..e, num.iter().copied());
        }
        _ => {
            let p = rng.below(v.len() + 1);
            v.splice(p..p, num.iter().copied());
        }
    }
}

/// The entries of a zip archive, in order; `None` if it does not parse.
fn unzip(data: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut z = zip::ZipArchive::new(Cursor::new(data)).ok()?;
    let mut out = Vec::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).ok()?;
        let mut buf = Vec::new();
        (&mut f).take(MAX_LEN as u64).read_to_end(&mut buf).ok()?;
        let name = f.name().ok()?.to_string();
        out.push((name, buf));
    }
    Some(out)
}

fn rezip(rng: &mut Rng, entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data) in entries {
        let method = if rng.chance(10) {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(method)
            .large_file(data.len() >= u32::MAX as usize);
        // A duplicate or unusual name is itself a mutation: skip what the writer refuses.
        if z.start_file(name.as_str(), opts).is_ok() {
            let _ = z.write_all(data);
        }
    }
    z.finish().map(Cursor::into_inner).unwrap_or_default()
}

/// A torch zip checkpoint: usually one entry mutated (the pickle most often) and re-packed,
/// sometimes an entry dropped or duplicated, sometimes the archive's raw bytes.
pub fn zip_checkpoint(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let Some(mut entries) = unzip(base).filter(|e| !e.is_empty() && rng.chance(85)) else {
        return bytes(rng, base, other);
    };
    let pkl = entries.iter().position(|(n, _)| n.ends_with("data.pkl"));
    let i = match pkl {
        Some(p) if rng.chance(60) => p,
        _ => rng.below(entries.len()),
    };
    match rng.below(20) {
        0 => {
            entries.remove(i);
        }
        1 => {
            let e = entries[i].clone();
            entries.push(e);
        }
        _ => {
            let other_pkl = unzip(other)
                .and_then(|o| o.into_iter().find(|(n, _)| n.ends_with("data.pkl")))
                .map(|(_, d)| d)
                .unwrap_or_default();
            entries[i].1 = bytes(rng, &entries[i].1, &other_pkl);
        }
    }
    rezip(rng, &entries)
}

/// A safetensors file: usually its JSON header mutated with the length prefix fixed.
pub fn safetensors(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    if base.len() < 8 || rng.chance(30) {
        return bytes(rng, base, other);
    }
    let n = u64::from_le_bytes(base[..8].try_into().unwrap_or([0; 8])) as usize;
    let Some(header) = base.get(8..8usize.saturating_add(n)) else {
        return bytes(rng, base, other);
    };
    let data = &base[8 + n..];
    let header = bytes(rng, header, &[]);
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    if rng.chance(70) {
        out.extend(data);
    } else {
        out.extend(bytes(rng, data, &[]));
    }
    out
}

/// CRC-32 (IEEE), as PNG and zip use it.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for part in parts {
        for &b in *part {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xedb8_8320
                } else {
                    c >> 1
                };
            }
        }
    }
    !c
}

/// An image: mutated bytes; for a PNG, usually with every chunk's CRC made right again so that
/// the decoder looks past it.
pub fn image(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = bytes(rng, base, other);
    if v.starts_with(b"\x89PNG\r\n\x1a\n") && rng.chance(85) {
        let mut at = 8;
        while at + 12 <= v.len() {
            let n = u32::from_be_bytes([v[at], v[at + 1], v[at + 2], v[at + 3]]) as usize;
            let Some(end) = (at + 8).checked_add(n).filter(|&e| e + 4 <= v.len()) else {
                break;
            };
            let crc = crc32(&[&v[at + 4..end]]);
            v[end..end + 4].copy_from_slice(&crc.to_be_bytes());
            at = end + 4;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_ieee() {
        assert_eq!(crc32(&[b"123456789"]), 0xcbf4_3926);
    }

    #[test]
    fn same_seed_same_inputs() {
        let base = b"{\"a\": [1, 2, 3]}".to_vec();
        let run = |seed| {
            let mut r = Rng::new(seed);
            (0..100)
                .map(|_| bytes(&mut r, &base, b"xyz"))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
