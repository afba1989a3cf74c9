//! Calibration photos: PNG or JPEG decoded to RGB in [0, 1], then scaled and centre-cropped to
//! the model's image size.
//!
//! Decoding: PNG of any colour type and depth (palette and grey expanded to RGB, an alpha
//! channel dropped, 16-bit divided by 65,535); baseline and progressive JPEG (grey and CMYK
//! converted to RGB by the decoder). Sizes are bounded before the pixels are allocated.
//!
//! Resizing is an area average: the image is scaled by `s = max(H/h, W/w)` so that it covers the
//! target, and output pixel `(i, j)` is the mean of the source area `[y0 + i/s, y0 + (i+1)/s) x
//! [x0 + j/s, x0 + (j+1)/s)` (partial source pixels weighted by their overlap), with the crop
//! window `(y0, x0)` centred. Averaging areas, rather than sampling bilinearly, does not alias
//! fine texture when a large photo is reduced, so the activations see what a downscaled photo
//! looks like. Images smaller than the target are refused unless `upscale` is asked for.

use crate::kernels::Array;
use std::path::Path;

/// Largest file read as an image.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;
/// Largest decoded image, in pixels (a 16k x 16k photo).
pub const MAX_IMAGE_PIXELS: usize = 1 << 28;

/// An RGB image, planar, values in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Rgb {
    pub height: usize,
    pub width: usize,
    /// `[3][height][width]`.
    pub data: Vec<f32>,
}

/// Decodes a PNG or JPEG (by its first bytes, not its name).
pub fn decode(path: &Path) -> Result<Rgb, String> {
    let bytes =
        crate::limits::read_regular(path, MAX_IMAGE_FILE_BYTES).map_err(|e| e.to_string())?;
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(&bytes)
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        decode_jpeg(&bytes)
    } else {
        Err("not a PNG or JPEG image".into())
    }
}

fn check_pixels(w: usize, h: usize) -> Result<usize, String> {
    match w.checked_mul(h) {
        Some(n) if n <= MAX_IMAGE_PIXELS && n > 0 => Ok(n),
        _ => Err(format!(
            "a {w}x{h} image is empty or over the limit of {MAX_IMAGE_PIXELS} pixels"
        )),
    }
}

fn decode_png(bytes: &[u8]) -> Result<Rgb, String> {
    let mut d = png::Decoder::new(std::io::Cursor::new(bytes));
    d.set_transformations(png::Transformations::EXPAND);
    let mut reader = d
        .read_info()
        .map_err(|e| format!("not a readable PNG: {e}"))?;
    let (w, h) = {
        let info = reader.info();
        (info.width as usize, info.height as usize)
    };
    check_pixels(w, h)?;
    let (color, depth) = reader.output_color_type();
    let channels = match color {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err("an indexed PNG that did not expand".into()),
    };
    let sixteen = match depth {
        png::BitDepth::Eight => false,
        png::BitDepth::Sixteen => true,
        d => return Err(format!("a PNG of bit depth {} after expansion", d as u8)),
    };
    let size = reader.output_buffer_size().ok_or("the PNG is too large")?;
    let mut buf = vec![0u8; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("not a readable PNG: {e}"))?;
    let bps = if sixteen { 2 } else { 1 };
    let sample = |row: &[u8], x: usize, c: usize| -> f32 {
        let at = (x * channels + c) * bps;
        if sixteen {
            f32::from(u16::from_be_bytes([row[at], row[at + 1]])) / 65535.0
        } else {
            f32::from(row[at]) / 255.0
        }
    };
    let plane = w * h;
    let mut data = vec![0f32; 3 * plane];
    for y in 0..h {
        let row = &buf[y * frame.line_size..];
        for x in 0..w {
            for c in 0..3 {
                // Grey (with or without alpha) is the same value in R, G and B.
                let src = if channels < 3 { 0 } else { c };
                data[c * plane + y * w + x] = sample(row, x, src);
            }
        }
    }
    Ok(Rgb {
        height: h,
        width: w,
        data,
    })
}

fn decode_jpeg(bytes: &[u8]) -> Result<Rgb, String> {
    use zune_jpeg::zune_core::bytestream::ZCursor;
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;
    let side = 1 << 16;
    let options = DecoderOptions::default()
        .set_max_width(side)
        .set_max_height(side)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    d.decode_headers()
        .map_err(|e| format!("not a readable JPEG: {e:?}"))?;
    let info = d.info().ok_or("not a readable JPEG: no header")?;
    let (w, h) = (info.width as usize, info.height as usize);
    let plane = check_pixels(w, h)?;
    let rgb = d
        .decode()
        .map_err(|e| format!("not a readable JPEG: {e:?}"))?;
    if rgb.len() != 3 * plane {
        return Err(format!(
            "the JPEG decoded to {} bytes, not the {} of {w}x{h} RGB",
            rgb.len(),
            3 * plane
        ));
    }
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * plane + i] = f32::from(px[c]) / 255.0;
        }
    }
    Ok(Rgb {
        height: h,
        width: w,
        data,
    })
}

/// `img` scaled and centre-cropped to `[1, 3, height, width]` by area averaging (see the module
/// docs). Smaller images are an error unless `upscale`.
pub fn fit(img: &Rgb, [th, tw]: [usize; 2], upscale: bool) -> Result<Array, String> {
    let (h, w) = (img.height, img.width);
    if th == 0 || tw == 0 {
        return Err(format!("the target size {th}x{tw} is empty"));
    }
    if !upscale && (h < th || w < tw) {
        return Err(format!(
            "the image is {w}x{h} (width x height), smaller than the model's {tw}x{th}"
        ));
    }
    let s = (th as f64 / h as f64).max(tw as f64 / w as f64);
    let ys = weights(h, th, s);
    let xs = weights(w, tw, s);
    let (plane, out_plane) = (h * w, th * tw);
    let mut out = vec![0f32; 3 * out_plane];
    // Rows first into a buffer of `th` rows of the full width, then columns.
    let mut rows = vec![0f64; th * w];
    for c in 0..3 {
        let src = &img.data[c * plane..][..plane];
        rows.fill(0.0);
        for (i, taps) in ys.iter().enumerate() {
            let r = &mut rows[i * w..][..w];
            for &(y, wt) in taps {
                for (acc, &v) in r.iter_mut().zip(&src[y * w..][..w]) {
                    *acc += wt * v as f64;
                }
            }
        }
        for i in 0..th {
            for (j, taps) in xs.iter().enumerate() {
                let v: f64 = taps.iter().map(|&(x, wt)| wt * rows[i * w + x]).sum();
                out[c * out_plane + i * tw + j] = v as f32;
            }
        }
    }
    Ok(Array::new(vec![1, 3, th, tw], out))
}

/// For each of `n` outputs along an axis of `len` source pixels scaled by `s`: the source
/// pixels its area covers and their weights (overlap lengths, summing to 1).
fn weights(len: usize, n: usize, s: f64) -> Vec<Vec<(usize, f64)>> {
    let span = n as f64 / s;
    let start = (len as f64 - span) / 2.0;
    let step = 1.0 / s;
    (0..n)
        .map(|i| {
            let (a, b) = (start + i as f64 * step, start + (i + 1) as f64 * step);
            let first = a.floor().max(0.0) as usize;
            let last = (b.ceil() as usize).min(len);
            let mut taps: Vec<(usize, f64)> = (first..last)
                .map(|p| (p, (b.min(p as f64 + 1.0) - a.max(p as f64)).max(0.0)))
                .filter(|&(_, wt)| wt > 0.0)
                .collect();
            let total: f64 = taps.iter().map(|t| t.1).sum();
            taps.iter_mut().for_each(|t| t.1 /= total);
            taps
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(h: usize, w: usize) -> Rgb {
        let plane = h * w;
        let data = (0..3 * plane)
            .map(|i| (i % plane) as f32 / plane as f32 + (i / plane) as f32 * 0.01)
            .collect();
        Rgb {
            height: h,
            width: w,
            data,
        }
    }

    #[test]
    fn halving_averages_two_by_two_blocks_of_the_centre_crop() {
        // 4 rows x 6 columns to 2x2: scale 1/2, a 4x4 window starting at column 1.
        let img = gradient(4, 6);
        let out = fit(&img, [2, 2], false).unwrap();
        for c in 0..3 {
            for i in 0..2 {
                for j in 0..2 {
                    let px = |y: usize, x: usize| img.data[c * 24 + y * 6 + x];
                    let (y, x) = (2 * i, 1 + 2 * j);
                    let want = (px(y, x) + px(y, x + 1) + px(y + 1, x) + px(y + 1, x + 1)) / 4.0;
                    let got = out.data[c * 4 + i * 2 + j];
                    assert!((got - want).abs() < 1e-6, "{c} {i} {j}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn same_size_is_the_identity_and_small_images_are_refused() {
        let img = gradient(3, 5);
        assert_eq!(fit(&img, [3, 5], false).unwrap().data, img.data);
        let e = fit(&img, [4, 4], false).unwrap_err();
        assert!(e.contains("5x3") && e.contains("smaller"), "{e}");
        let up = fit(&img, [6, 10], true).unwrap();
        // Doubling repeats each pixel in a 2x2 block.
        assert_eq!(up.data[0], img.data[0]);
        assert_eq!(up.data[11], img.data[0]);
    }

    #[test]
    fn weights_cover_fractional_pixels() {
        // 3 source pixels to 2: the middle one is split between the outputs.
        let w = weights(3, 2, 2.0 / 3.0);
        assert_eq!(w[0].len(), 2);
        assert!((w[0][0].1 - 2.0 / 3.0).abs() < 1e-12);
        assert!((w[1][1].1 - 2.0 / 3.0).abs() < 1e-12);
    }
}
