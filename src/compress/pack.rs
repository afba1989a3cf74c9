//! Sub-byte packing of palette indices (and other small unsigned codes).
//!
//! Bit order follows Core ML exactly: elements are packed one byte at a time starting from the
//! least significant bit, and an element that does not fit in the rest of a byte continues in
//! the low bits of the next one (`constexpr_lut_to_dense` in coremltools'
//! `converters/mil/mil/ops/defs/iOS16/constexpr_ops.py`, and the packer coremltools itself uses,
//! `coremltools.optimize._utils.pack_elements_into_bits`: `np.unpackbits(..., bitorder="little")`
//! of each element, first `nbits` bits kept, then `np.packbits(..., bitorder="little")`). The
//! hand-worked examples in the tests were checked against that function.

/// Packs `indices` into `ceil(bits · len / 8)` bytes, first element in the least significant
/// bits of the first byte. Unused high bits of the last byte are zero.
///
/// # Panics
/// If `bits` is not in `1..=8` or an index does not fit in `bits` bits.
pub fn pack_bits(indices: &[u16], bits: u32) -> Vec<u8> {
    assert!(
        (1..=8).contains(&bits),
        "can only pack 1..=8 bits per element, got {bits}"
    );
    let mut out = Vec::with_capacity((indices.len() * bits as usize).div_ceil(8));
    let mut acc: u32 = 0;
    let mut filled = 0u32;
    for &i in indices {
        assert!(
            u32::from(i) >> bits == 0,
            "index {i} does not fit in {bits} bits"
        );
        acc |= u32::from(i) << filled;
        filled += bits;
        while filled >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            filled -= 8;
        }
    }
    if filled > 0 {
        out.push(acc as u8);
    }
    out
}

/// Inverse of [`pack_bits`]: the first `count` elements of `bits` bits each.
///
/// # Panics
/// If `bits` is not in `1..=8` or `bytes` holds fewer than `count` elements.
pub fn unpack_bits(bytes: &[u8], bits: u32, count: usize) -> Vec<u16> {
    assert!(
        (1..=8).contains(&bits),
        "can only unpack 1..=8 bits per element, got {bits}"
    );
    assert!(
        bytes.len() * 8 >= count * bits as usize,
        "{} bytes hold fewer than {count} elements of {bits} bits",
        bytes.len()
    );
    let mask = (1u32 << bits) - 1;
    let mut out = Vec::with_capacity(count);
    let mut acc: u32 = 0;
    let mut filled = 0u32;
    let mut next = bytes.iter();
    while out.len() < count {
        if filled < bits {
            acc |= u32::from(*next.next().expect("length checked above")) << filled;
            filled += 8;
        }
        out.push((acc & mask) as u16);
        acc >>= bits;
        filled -= bits;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected bytes for each width, as produced by coremltools 9.0
    /// `optimize._utils.pack_elements_into_bits(np.array(input, np.uint8), bits)`.
    #[test]
    fn hand_worked_examples() {
        // 1 bit: elements 0..8 fill byte 0 from bit 0 up: 1,0,1,1,0,0,0,1 -> 0b1000_1101.
        assert_eq!(pack_bits(&[1, 0, 1, 1, 0, 0, 0, 1, 1], 1), [0x8d, 0x01]);
        // 2 bits, the example in constexpr_lut_to_dense's doc: i0=00 i1=11 i2=10 i3=01 read
        // MSB to LSB as 01_10_11_00, then i4=11 in the low bits of byte 1.
        assert_eq!(pack_bits(&[0, 3, 2, 1, 3], 2), [0b0110_1100, 0b0000_0011]);
        // 3 bits: byte 0 = i2[1:0] i1 i0 = 11_010_001; byte 1 = i5[0] i4 i3 i2[2] =
        // 0_101_100_0; byte 2 = i7 i6 i5[2:1] = 000_111_11.
        assert_eq!(pack_bits(&[1, 2, 3, 4, 5, 6, 7, 0], 3), [0xd1, 0x58, 0x1f]);
        // 4 bits: low nibble first.
        assert_eq!(pack_bits(&[0x1, 0xa, 0xf], 4), [0xa1, 0x0f]);
        // 6 bits: i0..i4 = 000101 100001 111111 000000 101010; byte 0 = i1[1:0] i0 =
        // 01_000101; byte 1 = i2[3:0] i1[5:2] = 1111_1000; byte 2 = i3 i2[5:4] = 000000_11;
        // byte 3 = padding i4 = 00_101010.
        assert_eq!(pack_bits(&[5, 33, 63, 0, 42], 6), [0x45, 0xf8, 0x03, 0x2a]);
        // 8 bits: bytes as they are.
        assert_eq!(pack_bits(&[0, 255, 17], 8), [0x00, 0xff, 0x11]);
    }

    #[test]
    fn round_trips() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for bits in [1u32, 2, 3, 4, 5, 6, 7, 8] {
            for len in [0usize, 1, 2, 3, 7, 8, 9, 15, 16, 17, 1000, 1001] {
                let v: Vec<u16> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state % (1 << bits)) as u16
                    })
                    .collect();
                let packed = pack_bits(&v, bits);
                assert_eq!(packed.len(), (len * bits as usize).div_ceil(8));
                assert_eq!(unpack_bits(&packed, bits, len), v, "bits {bits} len {len}");
                // Padding bits are zero, so the packing is canonical.
                let used = len * bits as usize % 8;
                if used != 0 {
                    assert_eq!(packed.last().unwrap() >> used, 0);
                }
            }
        }
    }

    #[test]
    fn extremes_round_trip() {
        for bits in [1u32, 2, 3, 4, 6, 8] {
            let max = (1u16 << bits) - 1;
            let v = vec![max; 13];
            assert_eq!(unpack_bits(&pack_bits(&v, bits), bits, 13), v);
        }
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn rejects_wide_index() {
        pack_bits(&[16], 4);
    }

    #[test]
    #[should_panic(expected = "fewer than")]
    fn rejects_short_input() {
        unpack_bits(&[0xff], 3, 3);
    }
}
