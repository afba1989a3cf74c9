//! Reading a `.mlpackage` back into memory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use prost::Message;

use super::blob::BlobReader;
use super::manifest::{Manifest, DATA_DIR, MANIFEST_FILE, WEIGHTS_FILE};
use super::PackageError;
use crate::proto::specification::Model;

/// A package read from disk.
#[derive(Debug, Clone)]
pub struct Package {
    /// The `.mlpackage` directory.
    pub path: PathBuf,
    pub model: Model,
    /// `weight.bin` bytes, if the package has that file. Its header has been validated.
    pub weights: Option<Vec<u8>>,
}

impl Package {
    /// A reader over the weights, if there are any. Blob errors name the weight file's full path.
    pub fn blobs(&self) -> Result<Option<BlobReader<'_>>, PackageError> {
        let Some(bytes) = &self.weights else {
            return Ok(None);
        };
        BlobReader::new(bytes)
            .map(Some)
            .map_err(|e| e.in_file(&self.weights_path()))
    }

    /// Where `@model_path/weights/weight.bin` resolves to for this package's root model.
    /// Only meaningful for the standard layout, which is all mlc writes; used in error messages.
    fn weights_path(&self) -> PathBuf {
        // A compiled bundle read as a package keeps its weights beside model.mil.
        if self.path.extension().is_some_and(|e| e == "mlmodelc") {
            return self.path.join("weights").join(WEIGHTS_FILE);
        }
        self.path
            .join(DATA_DIR)
            .join(super::manifest::WEIGHTS_DIR_PATH)
            .join(WEIGHTS_FILE)
    }
}

/// `Manifest.json` of a real package is well under 1 KB.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// `model.mlmodel` holds the program, not the weights; even large models stay far below this.
const MAX_MODEL_BYTES: u64 = 256 << 20;

/// Reads a package: `Manifest.json`, the root model it names, and the weights next to that model
/// (`@model_path/weights/weight.bin`, where `@model_path` is the model file's directory).
/// Works on packages coremltools wrote as well as on mlc's own.
///
/// Packages are untrusted input: only regular files are read (a FIFO or device is refused
/// before it is opened), each with a size cap, and no file may resolve (through a symlink)
/// to outside the package directory.
pub fn read_package(path: &Path) -> Result<Package, PackageError> {
    read(path, true)
}

/// [`read_package`] without `weight.bin` (left `None`, not read): a report on a package just
/// written needs its model, not gigabytes of weights in memory.
pub fn read_package_model(path: &Path) -> Result<Package, PackageError> {
    read(path, false)
}

fn read(path: &Path, with_weights: bool) -> Result<Package, PackageError> {
    let manifest_path = path.join(MANIFEST_FILE);
    // A package that is not there is reported as its missing manifest.
    let root = fs::canonicalize(path).map_err(PackageError::io(&manifest_path))?;
    let manifest_bytes = read_inside(&root, &manifest_path, Some(MAX_MANIFEST_BYTES))
        .map_err(PackageError::io(&manifest_path))?;
    let manifest = Manifest::parse(&manifest_bytes, &manifest_path)?;
    let model_rel = manifest.root_model_path(&manifest_path)?;

    let model_path = path.join(DATA_DIR).join(&model_rel);
    let model_bytes = read_inside(&root, &model_path, Some(MAX_MODEL_BYTES))
        .map_err(PackageError::io(&model_path))?;

    let weights_path = model_path
        .parent()
        .unwrap_or(Path::new(""))
        .join("weights")
        .join(WEIGHTS_FILE);
    // Bounded by the file's real size (blob offsets can only point inside what is there), and
    // by the weight-file limit, so a sparse file of a terabyte is refused rather than read.
    let weights = match with_weights.then(|| read_inside(&root, &weights_path, None)) {
        None => None,
        Some(Ok(bytes)) => Some(bytes),
        Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => None,
        Some(Err(source)) => {
            return Err(PackageError::Io {
                path: weights_path,
                source,
            })
        }
    };
    assemble(path, &model_path, &model_bytes, &weights_path, weights)
}

impl Package {
    /// A package from the bytes of its root model and `weight.bin`, checked as [`read_package`]
    /// checks the files it reads: the model decodes and the weight file's header is valid.
    /// `path` is the package directory; errors name the files of the standard layout in it.
    pub fn from_bytes(
        path: &Path,
        model: &[u8],
        weights: Option<Vec<u8>>,
    ) -> Result<Package, PackageError> {
        let model_path = path.join(DATA_DIR).join(super::manifest::MODEL_PATH);
        let weights_path = path
            .join(DATA_DIR)
            .join(super::manifest::WEIGHTS_DIR_PATH)
            .join(WEIGHTS_FILE);
        assemble(path, &model_path, model, &weights_path, weights)
    }
}

/// The package of a model and its weights read from `model_path` and `weights_path`.
fn assemble(
    path: &Path,
    model_path: &Path,
    model: &[u8],
    weights_path: &Path,
    weights: Option<Vec<u8>>,
) -> Result<Package, PackageError> {
    let model = Model::decode(model).map_err(|source| PackageError::Model {
        path: model_path.to_path_buf(),
        source,
    })?;
    if let Some(bytes) = &weights {
        BlobReader::new(bytes).map_err(|e| e.in_file(weights_path))?;
    }
    Ok(Package {
        path: path.to_path_buf(),
        model,
        weights,
    })
}

/// Reads `file` if it resolves to a regular file inside `root` (the canonical package
/// directory) of at most `max` bytes (`None`: the limit on weight files).
fn read_inside(root: &Path, file: &Path, max: Option<u64>) -> io::Result<Vec<u8>> {
    let real = fs::canonicalize(file)?;
    if !real.starts_with(root) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "resolves to {}, outside the package (symlinks must stay inside it)",
                real.display()
            ),
        ));
    }
    match max {
        Some(max) => crate::limits::read_regular(&real, max),
        None => crate::limits::read_weight_file(&real),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::blob::tests::Rng;
    use crate::package::BlobDType;
    use crate::proto::specification::model;

    const CT_PACKAGE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/ct_conv_relu.mlpackage"
    );

    /// A writable copy of the coremltools package.
    fn ct_copy() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("ct.mlpackage");
        for rel in [
            "Manifest.json",
            "Data/com.apple.CoreML/model.mlmodel",
            "Data/com.apple.CoreML/weights/weight.bin",
        ] {
            let to = dst.join(rel);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(Path::new(CT_PACKAGE).join(rel), to).unwrap();
        }
        (tmp, dst)
    }

    fn err_text(path: &Path) -> String {
        read_package(path).unwrap_err().to_string()
    }

    #[test]
    fn reads_coremltools_package() {
        let p = read_package(Path::new(CT_PACKAGE)).unwrap();
        assert_eq!(p.model.specification_version, 7);
        assert!(matches!(p.model.r#type, Some(model::Type::MlProgram(_))));
        let blobs = p.blobs().unwrap().unwrap();
        assert_eq!(blobs.len(), 1);
        let (dtype, data) = blobs.get(64).unwrap();
        assert_eq!((dtype, data.len()), (BlobDType::F16, 8 * 4 * 3 * 3 * 2));
    }

    #[test]
    fn missing_manifest_names_it() {
        let (_tmp, pkg) = ct_copy();
        fs::remove_file(pkg.join("Manifest.json")).unwrap();
        let e = read_package(&pkg).unwrap_err();
        assert!(
            matches!(e, PackageError::Io { ref path, .. } if path == &pkg.join("Manifest.json"))
        );
        let e = read_package(Path::new("/nonexistent/x.mlpackage")).unwrap_err();
        assert!(
            e.to_string()
                .contains("/nonexistent/x.mlpackage/Manifest.json"),
            "{e}"
        );
    }

    #[test]
    fn bad_json_and_missing_root_name_the_manifest() {
        let (_tmp, pkg) = ct_copy();
        let manifest = pkg.join("Manifest.json");
        fs::write(&manifest, b"{\"fileFormatVersion\": ").unwrap();
        let e = err_text(&pkg);
        assert!(
            e.starts_with(&format!("{}: invalid manifest", manifest.display())),
            "{e}"
        );

        fs::write(
            &manifest,
            br#"{"itemInfoEntries": {}, "rootModelIdentifier": "abc"}"#,
        )
        .unwrap();
        let e = err_text(&pkg);
        assert!(e.contains("Manifest.json") && e.contains("\"abc\""), "{e}");
    }

    #[test]
    fn undecodable_model_names_it() {
        let (_tmp, pkg) = ct_copy();
        let model = pkg.join("Data/com.apple.CoreML/model.mlmodel");
        fs::write(&model, [0x0a, 0xff, 0xff]).unwrap();
        let e = read_package(&pkg).unwrap_err();
        assert!(
            matches!(e, PackageError::Model { ref path, .. } if path == &model),
            "{e}"
        );
        fs::remove_file(&model).unwrap();
        assert!(err_text(&pkg).contains("model.mlmodel"));
    }

    #[test]
    fn corrupt_weights_name_the_file() {
        let (_tmp, pkg) = ct_copy();
        let weights = pkg.join("Data/com.apple.CoreML/weights/weight.bin");
        fs::write(&weights, [1, 0, 0, 0, 2, 0, 0, 0]).unwrap();
        let e = read_package(&pkg).unwrap_err();
        assert!(
            matches!(e, PackageError::Blob { ref path, offset: 0, .. } if path == &weights),
            "{e}"
        );

        // A header that is fine but a record cut short only shows when the blob is read; the
        // error then still names the package's weight file.
        let good = fs::read(Path::new(CT_PACKAGE).join("Data/com.apple.CoreML/weights/weight.bin"))
            .unwrap();
        fs::write(&weights, &good[..good.len() - 2]).unwrap();
        let p = read_package(&pkg).unwrap();
        let e = p.blobs().unwrap().unwrap().get(64).unwrap_err();
        assert!(matches!(e, PackageError::Blob { offset: 64, .. }), "{e}");
        let e = p.blobs().unwrap().unwrap().get(100).unwrap_err();
        assert!(matches!(e, PackageError::Blob { offset: 100, .. }), "{e}");

        fs::remove_file(&weights).unwrap();
        assert!(read_package(&pkg).unwrap().weights.is_none());
    }

    /// Mangled manifests, models and weight files on disk give errors, never panics; the
    /// pristine package reads, and damage the reader does not check (weight payloads) passes.
    #[test]
    fn corrupt_packages_never_panic() {
        let (_tmp, pkg) = ct_copy();
        let files = [
            "Manifest.json",
            "Data/com.apple.CoreML/model.mlmodel",
            "Data/com.apple.CoreML/weights/weight.bin",
        ];
        let originals: Vec<Vec<u8>> = files
            .iter()
            .map(|f| fs::read(pkg.join(f)).unwrap())
            .collect();
        let pristine = read_package(&pkg).expect("the pristine package reads");
        assert!(pristine.blobs().unwrap().unwrap().get(64).is_ok());

        let mut rng = Rng(0xC0FFEE);
        // (accepted, refused) per file.
        let mut counts = [(0, 0); 3];
        for _ in 0..300 {
            let which = rng.below(files.len());
            let mut b = originals[which].clone();
            if rng.below(3) == 0 {
                b.truncate(rng.below(b.len() + 1));
            } else {
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(b.len());
                    b[i] = rng.next() as u8;
                }
            }
            fs::write(pkg.join(files[which]), &b).unwrap();
            match read_package(&pkg) {
                Ok(p) => {
                    counts[which].0 += 1;
                    // read_package validated the weight header, so a reader must exist.
                    if let Some(r) = p.blobs().expect("header was validated") {
                        let _ = r.offsets();
                        let _ = r.get(64);
                    }
                }
                Err(e) => {
                    counts[which].1 += 1;
                    let msg = e.to_string();
                    assert!(
                        msg.starts_with(&pkg.display().to_string()) && !msg.contains('\n'),
                        "{msg}"
                    );
                }
            }
            fs::write(pkg.join(files[which]), &originals[which]).unwrap();
        }
        let [manifest, _model, weights] = counts;
        assert!(manifest.1 > 20, "manifest damage: {manifest:?}");
        // Most of weight.bin is payload, which only a checksum could vouch for.
        assert!(
            weights.0 > 20 && weights.1 > 5,
            "weight.bin damage: {weights:?}"
        );
        assert_eq!(read_package(&pkg).unwrap().weights, pristine.weights);
    }
}
