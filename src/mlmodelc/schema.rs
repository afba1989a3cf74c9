//! One feature's entry in `metadata.json`'s input and output schemas, as Core ML describes a
//! feature type: every value a string, shapes and sizes in two spellings (a bracketed list for
//! programs, `×`-separated for people).
//!
//! The rules follow Core ML's own `FeatureType::toDictionary` and `toString` (the routines
//! coremltools' older C++ `FeatureType.cpp` shows, and which a public decompilation of the
//! current `CoreML.framework` shows still run with `×` for `x` and `Grayscale16Half` added).
//! Multi-array entries are also checked against Apple-compiled bundles (`tests/mlmodelc.rs`);
//! no Apple-compiled ML Program with an image feature is public, so image entries rest on
//! that routine alone.

use crate::proto::specification as spec;

use spec::array_feature_type::ShapeFlexibility;
use spec::feature_type::Type;
use spec::image_feature_type::SizeFlexibility;

/// The entry for `f`, keys in the order mlc writes them (Apple's order is a hash order;
/// readers compare entries as maps).
pub fn feature_entry(f: &spec::FeatureDescription) -> Result<Vec<(&'static str, String)>, String> {
    let name = f.name.escape_debug().to_string();
    let optional = f.r#type.as_ref().is_some_and(|t| t.is_optional);
    let mut e = vec![
        ("name", f.name.clone()),
        ("shortDescription", f.short_description.clone()),
        ("isOptional", flag(optional).into()),
    ];
    let formatted = match f.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
        Some(Type::MultiArrayType(a)) => multi_array(a, &mut e).map_err(|m| format!("feature {name:?}: {m}"))?,
        Some(Type::ImageType(i)) => image(i, &mut e).map_err(|m| format!("feature {name:?}: {m}"))?,
        _ => {
            return Err(format!(
                "feature {name:?}: only multi-array and image features can be compiled by mlc (compile with --compiler xcrun)"
            ))
        }
    };
    // Core ML marks an optional feature's type with a trailing `?`.
    e.push((
        "formattedType",
        format!("{formatted}{}", if optional { "?" } else { "" }),
    ));
    Ok(e)
}

fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// Fills in a multi-array's entries; returns its formatted type.
fn multi_array(
    a: &spec::ArrayFeatureType,
    e: &mut Vec<(&'static str, String)>,
) -> Result<String, String> {
    use spec::array_feature_type::ArrayDataType as A;
    let dt = match A::try_from(a.data_type) {
        Ok(A::Float32) => "Float32",
        Ok(A::Float16) => "Float16",
        Ok(A::Double) => "Double",
        Ok(A::Int32) => "Int32",
        Ok(A::Int8) => "Int8",
        _ => return Err(format!("unknown array data type {}", a.data_type)),
    };
    let shape = default_shape(a);
    e.push(("type", "MultiArray".into()));
    e.push(("dataType", dt.into()));
    e.push(("shape", list(&shape)));
    match &a.shape_flexibility {
        None => e.push(("hasShapeFlexibility", "0".into())),
        Some(ShapeFlexibility::ShapeRange(r)) => {
            let ranges: Vec<(u64, i64)> = r
                .size_ranges
                .iter()
                .map(|r| (r.lower_bound, r.upper_bound))
                .collect();
            e.push(("hasShapeFlexibility", "1".into()));
            e.push(("shapeFlexibility", ranges_for_people(&ranges)));
            e.push(("shapeRange", ranges_listed(&ranges)));
        }
        Some(ShapeFlexibility::EnumeratedShapes(_)) => return Err(
            "has enumerated shapes; build with --multifunction or compile with --compiler xcrun"
                .into(),
        ),
    }
    Ok(if shape.is_empty() {
        format!("MultiArray ({dt})")
    } else {
        format!("MultiArray ({dt} {})", for_people(&shape))
    })
}

/// Fills in an image's entries; returns its formatted type.
fn image(
    i: &spec::ImageFeatureType,
    e: &mut Vec<(&'static str, String)>,
) -> Result<String, String> {
    use spec::image_feature_type::ColorSpace as C;
    let color = match C::try_from(i.color_space) {
        Ok(C::Grayscale) => "Grayscale",
        Ok(C::Rgb) => "RGB",
        Ok(C::Bgr) => "BGR",
        Ok(C::GrayscaleFloat16) => "Grayscale16Half",
        _ => return Err(format!("unknown image color space {}", i.color_space)),
    };
    let is_color = !matches!(
        C::try_from(i.color_space),
        Ok(C::Grayscale | C::GrayscaleFloat16)
    );
    let (w, h) = default_size(i).ok_or("image has no size")?;
    e.push(("type", "Image".into()));
    e.push(("width", w.to_string()));
    e.push(("height", h.to_string()));
    e.push(("colorspace", color.into()));
    e.push(("isColor", flag(is_color).into()));
    match &i.size_flexibility {
        None => e.push(("hasSizeFlexibility", "0".into())),
        Some(SizeFlexibility::ImageSizeRange(r)) => {
            let range = |r: &Option<spec::SizeRange>| {
                r.as_ref()
                    .map_or((0, 0), |r| (r.lower_bound, r.upper_bound))
            };
            let ranges = [range(&r.width_range), range(&r.height_range)];
            e.push(("hasSizeFlexibility", "1".into()));
            e.push(("sizeFlexibility", ranges_for_people(&ranges)));
            e.push(("sizeRange", ranges_listed(&ranges)));
        }
        Some(SizeFlexibility::EnumeratedSizes(_)) => {
            return Err(
                "has enumerated shapes (image sizes); build with --multifunction or compile with --compiler xcrun"
                    .into(),
            )
        }
    }
    Ok(format!("Image ({color} {w} \u{d7} {h})"))
}

/// The shape Core ML reports: the stated one, else the lower bounds of a range, else the
/// first enumerated shape.
pub fn default_shape(a: &spec::ArrayFeatureType) -> Vec<i64> {
    if !a.shape.is_empty() {
        return a.shape.clone();
    }
    match &a.shape_flexibility {
        Some(ShapeFlexibility::ShapeRange(r)) => r
            .size_ranges
            .iter()
            .map(|r| i64::try_from(r.lower_bound).unwrap_or(i64::MAX))
            .collect(),
        Some(ShapeFlexibility::EnumeratedShapes(e)) => e
            .shapes
            .first()
            .map(|s| s.shape.clone())
            .unwrap_or_default(),
        None => Vec::new(),
    }
}

/// (width, height) as Core ML reports them: the stated size when both are positive, else
/// the lower bounds of a range, else the first enumerated size.
fn default_size(i: &spec::ImageFeatureType) -> Option<(u64, u64)> {
    if i.width > 0 && i.height > 0 {
        return Some((i.width.unsigned_abs(), i.height.unsigned_abs()));
    }
    match &i.size_flexibility {
        Some(SizeFlexibility::ImageSizeRange(r)) => Some((
            r.width_range.as_ref().map_or(0, |r| r.lower_bound),
            r.height_range.as_ref().map_or(0, |r| r.lower_bound),
        )),
        Some(SizeFlexibility::EnumeratedSizes(e)) => e.sizes.first().map(|s| (s.width, s.height)),
        None => None,
    }
}

fn list<T: ToString>(v: &[T]) -> String {
    let items: Vec<String> = v.iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(", "))
}

fn for_people<T: ToString>(v: &[T]) -> String {
    let items: Vec<String> = v.iter().map(ToString::to_string).collect();
    items.join(" \u{d7} ")
}

/// `[[lo, hi], …]`, a negative upper bound (unbounded) printed as it is stored.
fn ranges_listed(ranges: &[(u64, i64)]) -> String {
    let items: Vec<String> = ranges
        .iter()
        .map(|(lo, hi)| format!("[{lo}, {hi}]"))
        .collect();
    format!("[{}]", items.join(", "))
}

/// `1 × 1...2048 × 8...`: a fixed dimension once, an unbounded one open-ended.
fn ranges_for_people(ranges: &[(u64, i64)]) -> String {
    let items: Vec<String> = ranges
        .iter()
        .map(|&(lo, hi)| {
            if i64::try_from(lo).ok() == Some(hi) {
                lo.to_string()
            } else if hi < 0 {
                format!("{lo}...")
            } else {
                format!("{lo}...{hi}")
            }
        })
        .collect();
    items.join(" \u{d7} ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use spec::image_feature_type::ImageSizeRange;

    fn feature(t: Type, optional: bool) -> spec::FeatureDescription {
        spec::FeatureDescription {
            name: "x".into(),
            short_description: "d".into(),
            r#type: Some(spec::FeatureType {
                r#type: Some(t),
                is_optional: optional,
            }),
        }
    }

    fn get<'a>(e: &'a [(&str, String)], k: &str) -> &'a str {
        e.iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.as_str())
            .unwrap()
    }

    fn sized(w: i64, h: i64, cs: spec::image_feature_type::ColorSpace) -> spec::ImageFeatureType {
        spec::ImageFeatureType {
            width: w,
            height: h,
            color_space: cs as i32,
            size_flexibility: None,
        }
    }

    #[test]
    fn image_entries_follow_core_ml() {
        use spec::image_feature_type::ColorSpace as C;
        let e = feature_entry(&feature(Type::ImageType(sized(640, 480, C::Rgb)), false)).unwrap();
        assert_eq!(get(&e, "type"), "Image");
        assert_eq!(get(&e, "formattedType"), "Image (RGB 640 \u{d7} 480)");
        assert_eq!((get(&e, "width"), get(&e, "height")), ("640", "480"));
        assert_eq!((get(&e, "colorspace"), get(&e, "isColor")), ("RGB", "1"));
        assert_eq!(get(&e, "hasSizeFlexibility"), "0");
        assert_eq!(get(&e, "isOptional"), "0");

        let e = feature_entry(&feature(
            Type::ImageType(sized(8, 8, C::GrayscaleFloat16)),
            true,
        ))
        .unwrap();
        assert_eq!(
            get(&e, "formattedType"),
            "Image (Grayscale16Half 8 \u{d7} 8)?"
        );
        assert_eq!((get(&e, "isColor"), get(&e, "isOptional")), ("0", "1"));
        let e = feature_entry(&feature(Type::ImageType(sized(8, 8, C::Bgr)), false)).unwrap();
        assert_eq!((get(&e, "colorspace"), get(&e, "isColor")), ("BGR", "1"));
    }

    #[test]
    fn image_size_ranges_default_to_their_lower_bounds() {
        use spec::image_feature_type::ColorSpace as C;
        let mut i = sized(0, 0, C::Grayscale);
        let r = |lo, hi| {
            Some(spec::SizeRange {
                lower_bound: lo,
                upper_bound: hi,
            })
        };
        i.size_flexibility = Some(SizeFlexibility::ImageSizeRange(ImageSizeRange {
            width_range: r(64, 1024),
            height_range: r(32, -1),
        }));
        let e = feature_entry(&feature(Type::ImageType(i), false)).unwrap();
        assert_eq!(get(&e, "formattedType"), "Image (Grayscale 64 \u{d7} 32)");
        assert_eq!(get(&e, "sizeFlexibility"), "64...1024 \u{d7} 32...");
        assert_eq!(get(&e, "sizeRange"), "[[64, 1024], [32, -1]]");
        assert_eq!(get(&e, "hasSizeFlexibility"), "1");
    }

    #[test]
    fn array_without_a_stated_shape_reports_its_range_lower_bounds() {
        let a = spec::ArrayFeatureType {
            data_type: spec::array_feature_type::ArrayDataType::Float16 as i32,
            shape_flexibility: Some(ShapeFlexibility::ShapeRange(
                spec::array_feature_type::ShapeRange {
                    size_ranges: vec![
                        spec::SizeRange {
                            lower_bound: 1,
                            upper_bound: 1,
                        },
                        spec::SizeRange {
                            lower_bound: 2,
                            upper_bound: -1,
                        },
                    ],
                },
            )),
            ..Default::default()
        };
        let e = feature_entry(&feature(Type::MultiArrayType(a), true)).unwrap();
        assert_eq!(get(&e, "shape"), "[1, 2]");
        assert_eq!(get(&e, "formattedType"), "MultiArray (Float16 1 \u{d7} 2)?");
        assert_eq!(get(&e, "shapeFlexibility"), "1 \u{d7} 2...");
        assert_eq!(get(&e, "shapeRange"), "[[1, 1], [2, -1]]");
    }

    #[test]
    fn other_types_and_enumerations_are_refused_in_one_line() {
        let e = feature_entry(&feature(Type::Int64Type(Default::default()), false)).unwrap_err();
        assert!(e.contains("\"x\"") && e.contains("--compiler xcrun"), "{e}");
        let i = spec::ImageFeatureType {
            size_flexibility: Some(SizeFlexibility::EnumeratedSizes(Default::default())),
            ..sized(8, 8, spec::image_feature_type::ColorSpace::Rgb)
        };
        let e = feature_entry(&feature(Type::ImageType(i), false)).unwrap_err();
        assert!(
            e.contains("enumerated") && e.contains("--multifunction"),
            "{e}"
        );
        let e = feature_entry(&feature(
            Type::ImageType(sized(0, 0, spec::image_feature_type::ColorSpace::Rgb)),
            false,
        ))
        .unwrap_err();
        assert!(e.contains("no size"), "{e}");
    }
}
