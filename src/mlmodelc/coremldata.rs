//! The two binary files of a compiled bundle: `coremldata.bin` (the model description coremlc
//! hands the runtime) and `analytics/coremldata.bin` (the input model's hash and name).
//! Layouts from `../shared/MLMODELC.md` §3 and §4, checked byte for byte against Apple's.

use sha2::{Digest, Sha256};

/// `Model.mlProgram`'s field number: coremlc writes the model kind at the start and in every
/// per-function trailer record.
const ML_PROGRAM: u32 = 502;
/// Where the description payload starts.
const PAYLOAD_AT: usize = 0x53;
/// `ModelDescription.metadata` as an empty message (field 100, length 0).
const EMPTY_METADATA: [u8; 3] = [0xa2, 0x06, 0x00];

/// `coremldata.bin` for a model with `functions` functions, whose `model.mlmodel` bytes are
/// `model_file`. The description is copied byte for byte from the file (not re-encoded), so
/// fields mlc's schema subset does not know survive, as they do through coremlc.
pub fn coremldata_bin(
    model_file: &[u8],
    spec_version: i32,
    functions: usize,
) -> Result<Vec<u8>, String> {
    let spec = u8::try_from(spec_version)
        .map_err(|_| format!("specification version {spec_version} out of range"))?;
    let desc = top_level_field(model_file, 2)?.unwrap_or(&[]);
    let has_metadata = top_level_field(desc, 100)?.is_some();

    let mut out = Vec::with_capacity(PAYLOAD_AT + desc.len() + 3 + 16 * functions.max(1));
    out.extend_from_slice(&ML_PROGRAM.to_le_bytes());
    // 5 in every Apple bundle of spec 7 and 8, 9 in every one of spec 9; what it means is
    // unknown, so other spec versions are refused before getting here.
    let kind: u32 = if spec_version >= 9 { 9 } else { 5 };
    out.extend_from_slice(&kind.to_le_bytes());
    out.resize(0x1c, 0);
    out.extend_from_slice(&7u64.to_le_bytes());
    out.extend_from_slice(b"generic");
    out.push(spec);
    out.resize(0x4b, 0);
    let payload_len = desc.len() + if has_metadata { 0 } else { 3 };
    out.extend_from_slice(&(payload_len as u64).to_le_bytes());
    out.extend_from_slice(desc);
    if !has_metadata {
        // coremlc adds an empty metadata message when the description has none.
        out.extend_from_slice(&EMPTY_METADATA);
    }
    for _ in 0..functions.max(1) {
        out.extend_from_slice(&ML_PROGRAM.to_le_bytes());
        out.extend_from_slice(&[0; 12]);
    }
    Ok(out)
}

/// `analytics/coremldata.bin`: coremlc 3404+'s two sections, the model hash being the base64
/// SHA-256 of the input model file and the name its file stem.
pub fn analytics_bin(model_file: &[u8], model_name: &str) -> Vec<u8> {
    let hash = base64(&Sha256::digest(model_file));
    let mut out = Vec::new();
    section(
        &mut out,
        "NeuralNetworkModelDetails",
        &[("containsCustomLayer", "0"), ("modelDimension", "0")],
    );
    section(
        &mut out,
        "SpecificationDetails",
        &[("modelHash", &hash), ("modelName", model_name)],
    );
    out
}

fn section(out: &mut Vec<u8>, name: &str, entries: &[(&str, &str)]) {
    let mut string = |s: &str| {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    string(name);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (k, v) in entries {
        for s in [k, v] {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// The bytes of the (single) length-delimited field `field` at the top level of a protobuf
/// message, or `None` if absent. Twice present is refused: protobuf would merge the two, and
/// a verbatim copy could not.
pub fn top_level_field(msg: &[u8], field: u64) -> Result<Option<&[u8]>, String> {
    let mut at = 0usize;
    let mut found = None;
    while at < msg.len() {
        let key = varint(msg, &mut at)?;
        let (num, wire) = (key >> 3, key & 7);
        let start;
        let end;
        match wire {
            0 => {
                varint(msg, &mut at)?;
                continue;
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                at = at
                    .checked_add(n)
                    .filter(|&e| e <= msg.len())
                    .ok_or("protobuf truncated")?;
                continue;
            }
            2 => {
                let len = usize::try_from(varint(msg, &mut at)?).map_err(|_| "length overflow")?;
                start = at;
                end = at
                    .checked_add(len)
                    .filter(|&e| e <= msg.len())
                    .ok_or("protobuf field runs past the end")?;
                at = end;
            }
            _ => return Err(format!("protobuf wire type {wire} not expected")),
        }
        if num == field {
            if found.is_some() {
                return Err(format!("protobuf field {field} appears twice"));
            }
            found = Some(&msg[start..end]);
        }
    }
    Ok(found)
}

fn varint(b: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *b.get(*at).ok_or("protobuf truncated in a varint")?;
        *at += 1;
        if shift == 63 && byte > 1 {
            return Err("protobuf varint overflows".into());
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("protobuf varint too long".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn field_scanner_refuses_truncation_and_duplicates() {
        assert_eq!(top_level_field(&[0x12, 1, 7], 2).unwrap(), Some(&[7u8][..]));
        assert_eq!(top_level_field(&[0x08, 0x96, 0x01], 2).unwrap(), None);
        assert!(top_level_field(&[0x12, 5, 7], 2).is_err());
        assert!(top_level_field(&[0x12, 0, 0x12, 0], 2).is_err());
        assert!(top_level_field(&[0x12], 2).is_err());
        assert!(top_level_field(&[0xff; 11], 2).is_err());
    }

    #[test]
    fn header_fields_sit_where_apple_puts_them() {
        let b = coremldata_bin(&[0x08, 0x07, 0x12, 0x02, 0x0a, 0x00], 7, 1).unwrap();
        assert_eq!(&b[0..4], &502u32.to_le_bytes());
        assert_eq!(&b[4..8], &5u32.to_le_bytes());
        assert_eq!(&b[0x24..0x2b], b"generic");
        assert_eq!(b[0x2b], 7);
        assert_eq!(&b[0x4b..0x53], &5u64.to_le_bytes());
        assert_eq!(&b[0x53..0x58], &[0x0a, 0x00, 0xa2, 0x06, 0x00]);
        assert_eq!(b.len(), 0x58 + 16);
    }
}
